"""Train a zoo model from scratch with the project's command, evaluate it, check the targets.

    python benchmarks/toy_model.py                        # train `default` into runs/bench-default
    python benchmarks/toy_model.py --skip-train --model default   # evaluate the shipped model

Writes benchmarks/results/toy_model_{config}.json: the wall-clock time of
``python -m toy_models.train`` (corpus generation and tokenizer training included), the
training throughput it reports, the full evaluation on both held-out splits (``heldout``:
held-out instances in training forms; ``heldout_forms``: held-out instances in forms never
trained on) with the wall-clock time it took, and each target with the measured value and
whether it is met, each split's own targets marked (instances) or (forms): addition exact
match >= 0.95 / 0.85, induction loss ratio <= 0.15 with every separator, successor accuracy
>= 0.95 / 0.85, subtoken induction >= 0.80 / 0.70; and the head scores, the attention sink and
the training time; and induction on repeated sentences written by hand
(``HAND_WRITTEN_INDUCTION``: next word right, its probability; also opened with a space, among
the prompts where one token of match is ambiguous and among those whose sentence holds one of
the corpus's repeat separators); and ``separator_probe``: induction on an ambiguous `` the``
after each of the corpus's separators and after ordinary words (``separator_probe``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toy_models.cli import ArgumentParser, path_arg, positive_int, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def targets(results: dict, train_wall_s: float | None) -> dict:
    """Every target with its measured value and whether it is met: the evaluation's own
    (``toy_models.evaluate.TARGETS``, per held-out split) and the foundation issue's others."""
    from toy_models.evaluate import EVAL_SPLITS, SPLIT_LABELS

    instances = results["heldout"]
    ind, sink = instances["induction"], results["attention_sink"]
    checks = {
        "train_minutes<=20": (train_wall_s and train_wall_s / 60, lambda v: v <= 20),
        "induction_head_score>=0.5": (ind["best_induction_head"]["score"], lambda v: v >= 0.5),
        "previous_token_head_score>=0.5": (
            ind["best_previous_token_head"]["score"],
            lambda v: v >= 0.5,
        ),
        "bos_attention_mass_layer>=1>=0.5": (
            sink["best_head_layer_ge_1"]["score"],
            lambda v: v >= 0.5,
        ),
    }
    for split, threshold in (("heldout", 0.95), ("heldout_forms", 0.85)):
        by_digits = results[split]["addition"]["by_digits"]
        three_digit = by_digits.get("3", by_digits.get(3))
        checks[f"addition_3digit_exact_match>={threshold:g} ({SPLIT_LABELS[split]})"] = (
            three_digit,
            lambda v, t=threshold: v >= t,
        )
    out = {
        name: {"value": value, "met": None if value is None else bool(ok(value))}
        for name, (value, ok) in checks.items()
    }
    for split in EVAL_SPLITS:
        for name, check in results["targets"][split].items():
            out[f"{name} ({SPLIT_LABELS[split]})"] = {
                "value": check["value"],
                "met": check["met"],
            }
    return out


# Repeated sentences written by hand (in no split of the corpus; the second copy stops before
# a word the first copy gives): does induction copy whatever text repeats, or only the corpus's
# segments? Written before the corpus-v4 model was evaluated; the first six after corpus v3's
# model had failed on them.
HAND_WRITTEN_INDUCTION = (
    (
        "Mia saw milk, garden and red boat near the river. Later Mia saw milk, garden and red",
        " boat",
    ),
    ("The cat is on a green boat. The cat is on a green", " boat"),
    (" cat sat green boat river. cat sat green", " boat"),
    (" milk a red boat river; milk a red", " boat"),
    (" milk the red boat river; milk the red", " boat"),
    (" cat on a green boat river. cat on a green", " boat"),
    ("Tom said the old door was open. Then Tom said the old door was", " open"),
    ("In the evening the bird sang by the window. In the evening the bird sang by the", " window"),
    ("She put the tea on the table and left. She put the tea on the", " table"),
    ("The small fox ran to the hill at night. Again, the small fox ran to the", " hill"),
    ("We found a key under the blue chair. We found a key under the blue", " chair"),
    ("It is very cold and the wind is loud. It is very cold and the wind is", " loud"),
    (
        "The ship went past the bridge, then the harbor. The ship went past the bridge, then the",
        " harbor",
    ),
    ("my dog likes bread with milk; my dog likes bread with", " milk"),
    ("a big owl sat in the old tree - a big owl sat in the old", " tree"),
    (
        "First the rain, then the snow, then the sun. First the rain, then the snow, then the",
        " sun",
    ),
    ("He wrote a song about the moon and the sea. He wrote a song about the moon and the", " sea"),
    ("the glass of water is on the paper # the glass of water is on the", " paper"),
    ("Look at the bright star over the castle! Look at the bright star over the", " castle"),
    ("the horse and the wolf and the bear went home. the horse and the wolf and the", " bear"),
    (
        "Is the lamp in the kitchen or in the garden? Is the lamp in the kitchen or in the",
        " garden",
    ),
    ("The train was slow because of the snow. The train was slow because of the", " snow"),
    ("one cup, two cups and a coin. one cup, two cups and a", " coin"),
    ("At noon the farm was quiet and warm. At noon the farm was quiet and", " warm"),
    ("Zora and Plim went to the village. Zora and Plim went to the", " village"),
    ("Please bring the drum to the museum. Please bring the drum to the", " museum"),
    ("The letter from the tower was sad. The letter from the tower was", " sad"),
    ("this old map shows a hidden beach / this old map shows a hidden", " beach"),
    ("Kelo likes the sweet apple from the valley. Kelo likes the sweet apple from the", " valley"),
    ("so the frog jumped into the pond at dawn and the frog jumped into the", " pond"),
)


def hand_written_induction(model, tokenizer) -> dict:
    """Each sentence's next-token prediction: right when the argmax is the first token of the
    word the first copy gives; its probability; the prompts with what was predicted. Beside it,
    ``right_with_leading_space``: the same sentences opened with a space, as the corpus's first
    copies always were up to corpus v4 (a typed prompt opens without one, so its first word
    tokenizes unlike the copy's): the gap between the two counts is how much the model's
    induction depends on the copies' first tokens being alike. ``ambiguous``: the count among
    the prompts whose last token occurs earlier followed by different tokens (``_ambiguous``),
    where the tokens before it must be matched too; ``holds_separator``: among those whose
    repeated sentence holds one of the corpus's repeat separators (``holds_separator``)."""
    import torch

    from toy_models.tokenizer import token_text

    def predict(ids: list[int], target: int) -> tuple[float, int]:
        with torch.no_grad():
            log_probs = model(torch.tensor([ids])).float()[0, -1].log_softmax(-1)
        return float(log_probs[target].exp()), int(log_probs.argmax())

    rows, spaced = [], 0
    for prompt, word in HAND_WRITTEN_INDUCTION:
        ids = tokenizer.encode(prompt).ids
        target = tokenizer.encode(word).ids[1]  # the word's first token (after BOS)
        probability, top = predict(ids, target)
        spaced += predict(tokenizer.encode(" " + prompt.lstrip()).ids, target)[1] == target
        rows.append({
            "prompt": prompt, "word": word, "right": top == target, "probability": probability,
            "predicted": token_text(tokenizer, top), "ambiguous": _ambiguous(ids),
            "holds_separator": holds_separator(prompt, word),
        })  # fmt: skip
    ambiguous = [r for r in rows if r["ambiguous"]]
    separated = [r for r in rows if r["holds_separator"]]
    return {
        "right": sum(r["right"] for r in rows),
        "n": len(rows),
        "mean_probability": sum(r["probability"] for r in rows) / len(rows),
        "right_with_leading_space": spaced,
        "ambiguous": {"right": sum(r["right"] for r in ambiguous), "n": len(ambiguous)},
        "holds_separator": {"right": sum(r["right"] for r in separated), "n": len(separated)},
        "prompts": rows,
    }


# Joiners of the separator probe: the corpus's repeat separators, then ordinary words.
SEPARATOR_PROBE_JOINERS = ((" and", True), (" then", True), (",", True), (" of", False),
                           (" with", False), (" near", False), (" by", False))  # fmt: skip


def separator_probe(model, tokenizer, n: int = 300, seed: int = 12) -> dict:
    """Induction where one token of match is ambiguous, after a separator or after a word:
    ``" C the A{j} the B D. C the A{j} the"`` -> `` B``, for ``n`` draws of four different
    single-token lexicon words and each joiner ``j`` of ``SEPARATOR_PROBE_JOINERS`` (the same
    draws for every joiner). ` the` is followed by A and by B, so the token before it decides;
    the corpus's separators stand between a segment and its copy in training. Right: the
    argmax is B. Returns the rate per joiner and whether it is a corpus separator."""
    import random

    import torch

    from toy_models.data import REPEAT_WORDS

    encoded = {w: tokenizer.encode(" " + w, add_special_tokens=False).ids for w in REPEAT_WORDS}
    token = {w: ids[0] for w, ids in encoded.items() if len(ids) == 1}  # single-token words
    words = [w for w in REPEAT_WORDS if w in token]
    rng = random.Random(seed)
    draws = [rng.sample(words, 4) for _ in range(n)]
    rates = {}
    for joiner, separator in SEPARATOR_PROBE_JOINERS:
        prompts = [f" {c} the {a}{joiner} the {b} {d}. {c} the {a}{joiner} the"
                   for a, b, c, d in draws]  # fmt: skip
        ids = torch.tensor([tokenizer.encode(p).ids for p in prompts])
        with torch.no_grad():
            top = model(ids)[:, -1].argmax(-1).tolist()
        right = sum(t == token[b] for t, (_, b, _, _) in zip(top, draws, strict=True))
        rates[joiner] = {"right": right / n, "separator": separator}
    return {"n": n, "joiners": rates}


def holds_separator(prompt: str, word: str) -> bool:
    """Whether the sentence that is repeated (the prompt up to the first occurrence of
    ``word``) holds one of the corpus's repeat separators (``,``, `` and``, `` then``, ``.``...)
    inside it: in training those stand between a segment and its copy."""
    from toy_models.data import REPEAT_SEPARATORS

    sentence = prompt[: prompt.index(word) + len(word)]
    separators = {s for s in REPEAT_SEPARATORS["train"] if s.strip()}
    # a separator ending in a letter must end a word there (`` and``, not `` android``)
    return any(
        re.search(re.escape(s) + (r"(?![A-Za-z])" if s[-1].isalpha() else ""), sentence)
        for s in separators
    )


def _ambiguous(ids: list[int]) -> bool:
    """Whether the last token occurs earlier followed by different tokens: one token of match
    does not tell which comes next (``... by the window. In the evening ... by the``), so
    induction has to match the tokens before it too."""
    after = {ids[i + 1] for i in range(len(ids) - 1) if ids[i] == ids[-1]}
    return len(after) > 1


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/toy_model.py", description=__doc__)
    parser.add_argument("--config", default="default", help="zoo config to train (default)")
    parser.add_argument("--out", type=path_arg, help="run directory (runs/bench-CONFIG)")
    parser.add_argument("--skip-train", action="store_true", help="only evaluate --model")
    parser.add_argument("--model", help="model to evaluate with --skip-train (zoo name or dir)")
    parser.add_argument(
        "--docs", type=positive_int, default=200, help="documents per family and held-out split"
    )
    args = parser.parse_args(argv)
    if args.skip_train and args.model is None:
        parser.error("--skip-train evaluates --model: name one (e.g. --model default)")
    if args.model is not None and not args.skip_train:  # a fuzz pass's --model was ignored
        # while --config trained a model (and wrote its results)
        parser.error("--model is what --skip-train evaluates; without it --config trains a "
                     "model: add --skip-train, or drop --model")  # fmt: skip
    from toy_models.zoo import CONFIGS

    if args.config not in CONFIGS:
        parser.error(f"unknown --config {args.config!r}; known: {', '.join(CONFIGS)}")
    out = args.out or Path("runs") / f"bench-{args.config}"
    train_wall_s = train_meta = None
    if not args.skip_train:
        cmd = [sys.executable, "-m", "toy_models.train", "--config", args.config, "--out", str(out)]
        if (out / "checkpoint").exists():
            cmd.append("--resume")
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        train_wall_s = time.perf_counter() - start
        train_meta = json.loads((out / "config.json").read_text())
    from toy_models.evaluate import evaluate, summary
    from toy_models.files import write_json_atomic
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(args.model if args.skip_train else str(out))
    start = time.perf_counter()
    results = evaluate(model, tokenizer, args.docs, progress=True)
    eval_wall_s = time.perf_counter() - start
    results = json.loads(json.dumps(results))  # int keys become strings, as in the file
    print(summary(results))
    hand = hand_written_induction(model, tokenizer)
    count = lambda part: f"{hand[part]['right']}/{hand[part]['n']}"  # noqa: E731
    print(
        f"hand-written repeated sentences: {hand['right']}/{hand['n']} next words right, mean "
        f"probability {hand['mean_probability']:.2f}; opened with a space: "
        f"{hand['right_with_leading_space']}/{hand['n']}; where one token of match is "
        f"ambiguous: {count('ambiguous')}; where the repeated sentence holds a separator of "
        f"the corpus: {count('holds_separator')}"
    )
    probe = separator_probe(model, tokenizer)
    print("ambiguous ' the' after a joiner, right: " + ", ".join(
        f"{j!r} {r['right']:.0%}{' (separator)' if r['separator'] else ''}"
        for j, r in probe["joiners"].items()
    ))  # fmt: skip
    report = {
        "config": args.config,
        "model": args.model if args.skip_train else str(out),
        "train_wall_s": train_wall_s,
        "train_tokens_per_s": None if train_meta is None else train_meta["train_tokens_per_s"],
        "train_steps": None if train_meta is None else train_meta["train"]["steps"],
        "docs_per_family": args.docs,
        "eval_wall_s": eval_wall_s,
        "evaluation": results,
        "hand_written_induction": hand,
        "separator_probe": probe,
        "targets": targets(results, train_wall_s),
    }
    RESULTS.mkdir(exist_ok=True)
    # an evaluation alone must not overwrite the record of a timed training run
    suffix = "_eval" if args.skip_train else ""
    path = RESULTS / f"toy_model_{args.config}{suffix}.json"
    write_json_atomic(path, report)
    for name, t in report["targets"].items():
        value = "n/a" if t["value"] is None else f"{t['value']:.4g}"
        verdict = {True: "met", False: "NOT met", None: ""}[t["met"]]
        print(f"{name:58s} {value:>10s}  {verdict}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
