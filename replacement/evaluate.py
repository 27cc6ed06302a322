"""How good is a replacement set? Reconstruction, sparsity, and the loss it keeps.

    python -m replacement.evaluate --model default --replacement DIR [--batches 8] [--json F]

On held-out generated rows:
- per layer and kind (Lorsa, transcoder): FVU, L0 (mean active units per token) and the dead
  fraction (units that never fire on the evaluated tokens);
- next-token cross-entropy and KL to the original model with each replacement layer spliced in
  alone, and with every layer replaced at once (the fully sparsified model, no error terms),
  each as the fraction of loss recovered against mean-ablating the same layers:
  ``(CE_ablated - CE_replaced) / (CE_ablated - CE_original)``;
- per task family: the probes of ``toy_models.evaluate`` on the fully sparsified model next to
  the original (does it still add, still induct?).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING

from toy_models.cli import ArgumentParser, UserError, file_arg, path_text, run_cli
from toy_models.data import stream_rows

from . import SUBLAYERS

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

EVAL_SEED = 4242
MAX_BATCHES = 10_000  # held-out batches of 16 rows a command line may ask for
MAX_DOCS = 10_000  # probe documents per family
# The keys of the results ``main`` writes to ``--json``: a file holding them is an earlier
# run's results, which a rerun may replace (``toy_models.files.check_writable_file``).
RESULT_KEYS = frozenset(
    {"model", "replacement", "heldout_tokens", "reconstruction", "loss", "families"}
)


def _no_grad(fn):
    """``torch.no_grad()`` as a decorator that imports torch only when called, so that the
    CLI's ``--help`` and argument errors never pay for it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def heldout_batches(model, tokenizer, n_batches: int, batch_size: int = 16) -> list[Tensor]:
    """``n_batches`` batches of ``batch_size`` held-out rows (a count below 1 gave empty
    tensors that every figure then divided by)."""
    import torch

    from toy_models.checkpoint import check_value

    check_value("int", n_batches, "n_batches")
    check_value("int", batch_size, "batch_size")
    rows = stream_rows(tokenizer, model.cfg.n_ctx, "heldout", EVAL_SEED)
    return [torch.tensor([next(rows)[1] for _ in range(batch_size)]) for _ in range(n_batches)]


def next_token_stats(logits: Tensor, tokens: Tensor, reference: Tensor | None = None) -> dict:
    """Mean cross-entropy and, against reference logits, mean KL(reference || logits)."""
    batch, n = tokens.shape
    if tuple(logits.shape[:2]) != (batch, n) or n < 2:
        raise ValueError(f"logits {tuple(logits.shape)} do not line up with tokens "
                         f"{tuple(tokens.shape)} of at least 2 positions")  # fmt: skip
    if reference is not None and reference.shape != logits.shape:
        raise ValueError(f"reference logits {tuple(reference.shape)}, logits "
                         f"{tuple(logits.shape)}: not of one run's shape")  # fmt: skip
    log_probs = logits[:, :-1].log_softmax(-1)
    ce = -log_probs.gather(-1, tokens[:, 1:, None]).mean().item()
    out = {"ce": ce}
    if reference is not None:
        ref = reference[:, :-1].log_softmax(-1)
        out["kl"] = (ref.exp() * (ref - log_probs)).sum(-1).mean().item()
    return out


def _checked_batches(batches: list[Tensor]) -> list[Tensor]:
    """``batches`` when there is one or more: every figure below is a mean over them."""
    if not len(batches):
        raise ValueError("batches must hold at least one batch of tokens")
    return batches


def _sublayer(kind: str, layer: int) -> tuple[str, str]:
    """(input, output) hook names of the sublayer that a kind of dictionary replaces."""
    from .activations import lorsa_hooks, transcoder_hooks

    return lorsa_hooks(layer) if kind == "lorsa" else transcoder_hooks(layer)


class ReconstructionTally:
    """FVU, L0 (mean active units per token) and dead fraction (units never active) of one
    dictionary, summed over batches: ``add`` each batch's code, reconstruction and target,
    then ``result``. Every evaluation of a dictionary counts them here.

    Memory is constant in the number of batches: the targets' spread about their overall mean
    is merged batch by batch (Chan et al.'s pairwise update, in float64), exact for constant
    targets (a spread of 0, so a NaN FVU, as ``dictionaries.fvu_of_sums`` says)."""

    def __init__(self, n_units: int, name: str = "a dictionary"):
        import torch

        self.residual, self.active, self.tokens = 0.0, 0, 0
        self.mean, self.spread = 0.0, 0.0  # the targets' mean and spread about it, so far
        self.fired = torch.zeros(n_units, dtype=torch.bool)
        self.name = name

    def add(self, code: Tensor, recon: Tensor, target: Tensor) -> None:
        # A reconstruction beyond float32 (weights that load, finite, but overflow in use) has
        # no FVU: its infinity was written as null, "could not be measured on this data", by
        # replacement.evaluate and as Infinity by the ablation sweep (a review). The error
        # energy is summed in float64: float32 squares of finite errors overflowed as well.
        if not recon.isfinite().all():
            raise ValueError(f"{self.name}: its reconstruction holds NaN or infinite "
                             "values (its weights overflow float32): no figure of it is "
                             "measured")  # fmt: skip
        self.residual += (recon.double() - target.double()).pow(2).sum().item()
        self.active += (code != 0).sum().item()
        self.fired |= (code != 0).flatten(0, -2).any(0)
        y = target.flatten(0, -2).double()
        n, mean = len(y), y.mean(0)
        total = self.tokens + n  # (the first batch: its own mean and spread, exactly)
        delta = mean - self.mean
        self.spread += (y - mean).pow(2).sum().item() + delta.pow(2).sum().item() * (
            self.tokens * n / total
        )
        self.mean = self.mean + delta * (n / total)
        self.tokens = total

    def result(self) -> dict[str, float]:
        """The FVU is NaN where the targets do not vary (``dictionaries.fvu_of_sums``)."""
        from .dictionaries import fvu_of_sums

        return {
            "fvu": fvu_of_sums(self.residual, self.spread),
            "l0": self.active / self.tokens,
            "dead_fraction": 1 - self.fired.float().mean().item(),
        }


@_no_grad
def reconstruction_stats(replacement, batches: list[Tensor]) -> dict:
    """FVU, L0 and dead fraction per layer (``ReconstructionTally``), on the original model's
    own activations."""
    batches = _checked_batches(batches)
    model = replacement.model
    sites = [
        (name, l, module)
        for name, modules in (
            ("lorsa", replacement.lorsas),
            ("transcoder", replacement.transcoders),
        )
        for l, module in enumerate(modules)
    ]
    hooks = {h for name, l, _ in sites for h in _sublayer(name, l)}
    tallies = {(name, l): ReconstructionTally(m.decoder.shape[0], f"the {name} of layer {l}")
               for name, l, m in sites}  # fmt: skip
    for tokens in batches:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
        for name, l, module in sites:
            x_name, y_name = _sublayer(name, l)
            x, y = cache[x_name], cache[y_name]
            z = module.encode(x)
            tallies[name, l].add(z, module.decode(z, x), y)
    out: dict[str, list[dict]] = {"lorsa": [], "transcoder": []}
    for name, l, _ in sites:
        out[name].append(tallies[name, l].result())
    return out


@_no_grad
def mean_outputs(model, batches: list[Tensor]) -> dict[str, Tensor]:
    """Mean attention and MLP output per layer over held-out tokens (for mean ablation)."""
    from toy_models.model import hook_name

    batches = _checked_batches(batches)
    sites = ("hook_attn_out", "hook_mlp_out")
    names = [hook_name(l, site) for l in range(model.cfg.n_layers) for site in sites]
    totals = {name: 0.0 for name in names}
    count = 0
    for tokens in batches:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        count += tokens.numel()
        for name in names:
            totals[name] = totals[name] + cache[name].sum(dim=(0, 1))
    return {name: total / count for name, total in totals.items()}


def splice_hooks(
    sites: list[tuple[str, int]], output: Callable[..., Tensor], reads_input: bool
) -> list[tuple[str, Callable]]:
    """Hooks that replace the output of each sublayer ``(kind, layer)`` of ``sites`` (kind
    ``"lorsa"``: the attention layer, ``"transcoder"``: the MLP) by ``output(kind, layer, y,
    x)``: ``y`` its own output, ``x`` its input, hooked only when ``reads_input`` (else
    ``None``: a hook there moves the LayerNorm off its fused path, which can change the last
    bits)."""
    inputs: dict[str, Tensor] = {}
    hooks: list[tuple[str, Callable]] = []
    for kind, l in sites:
        x_name, y_name = _sublayer(kind, l)

        def keep(x, hook, key=x_name):
            inputs[key] = x

        def splice(y, hook, key=x_name, kind=kind, l=l):
            return output(kind, l, y, inputs.get(key))

        hooks += [(x_name, keep)] if reads_input else []
        hooks.append((y_name, splice))
    return hooks


# Loss recovered is not measured (NaN, null in the JSON) where mean-ablating costs less than this
# (nats): a ratio over a gap of noise (a reviewer's 30-step model: 210.7% over 0.008 nats).
MIN_GAP = 0.02


def measurable_gap(ce_original: float, ce_ablated: float) -> bool:
    """Whether ablating raises the loss by more than ``MIN_GAP``: where loss recovered is
    measured at all."""
    return ce_ablated - ce_original > MIN_GAP


def fraction_recovered(ce_original: float, ce_ablated: float, ce_replaced: float) -> float:
    """Loss recovered, ``(CE_ablated - CE_replaced) / (CE_ablated - CE_original)``; NaN where
    the gap is not ``measurable_gap``. Every loss recovered of the project is this one."""
    if not measurable_gap(ce_original, ce_ablated):
        return math.nan
    return (ce_ablated - ce_replaced) / (ce_ablated - ce_original)


@_no_grad
def loss_recovered(replacement, batches: list[Tensor]) -> dict:
    """CE and KL with each layer spliced in alone and with all replaced, against mean ablation."""
    batches = _checked_batches(batches)
    model = replacement.model
    n = model.cfg.n_layers
    means = mean_outputs(model, batches)
    everything = [(kind, l) for l in range(n) for kind in SUBLAYERS]

    clean_logits = [model(tokens) for tokens in batches]  # the reference of every run below

    def reconstruction(kind, l, y, x):
        module = replacement.lorsas[l] if kind == "lorsa" else replacement.transcoders[l]
        return module.decode(module.encode(x), x)

    def mean(kind, l, y, x):
        return means[_sublayer(kind, l)[1]].expand_as(y)

    def run(spliced, ablate: bool) -> dict:
        stats = []
        for tokens, clean in zip(batches, clean_logits, strict=True):
            if spliced == "sparse":
                logits = replacement(tokens, mode="sparse")
            else:
                hooks = splice_hooks(spliced, mean if ablate else reconstruction, not ablate)
                logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
            stats.append(next_token_stats(logits, tokens, clean))
        return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}

    ce_original = sum(
        next_token_stats(clean, t)["ce"] for clean, t in zip(clean_logits, batches, strict=True)
    ) / len(batches)

    def summary(replaced: dict, ablated: dict) -> dict:
        return {
            "ce": replaced["ce"],
            "kl": replaced["kl"],
            "ce_mean_ablated": ablated["ce"],
            "loss_recovered": fraction_recovered(ce_original, ablated["ce"], replaced["ce"]),
        }

    per_layer = {
        kind: [summary(run([(kind, l)], False), run([(kind, l)], True)) for l in range(n)]
        for kind in SUBLAYERS
    }
    return {
        "ce_original": ce_original,
        "spliced_alone": per_layer,
        "all_layers": summary(run("sparse", False), run(everything, True)),
    }


def family_probes(replacement, tokenizer, n_docs: int) -> dict:
    """The toy model's mechanism probes on the original and on the fully sparsified model."""
    from toy_models import evaluate as ev

    out = {}
    for name, model, head_scores in (
        ("original", replacement.model, True),
        ("sparse", replacement, False),
    ):
        out[name] = {
            "heldout_loss": ev.heldout_loss(model, tokenizer, n_docs),
            "addition": ev.addition_probe(model, tokenizer, n_docs)["exact_match"],
            "induction_loss_ratio": ev.induction_probe(model, tokenizer, n_docs, head_scores)[
                "loss_ratio"
            ],
            "successor": ev.successor_probe(model, tokenizer, n_docs)["accuracy"],
            "subtoken_induction": ev.subtoken_induction_probe(model, tokenizer, n_docs)["accuracy"],
        }
    return out


def evaluate_replacement(replacement, tokenizer, n_batches: int = 8, n_docs: int = 100) -> dict:
    batches = heldout_batches(replacement.model, tokenizer, n_batches)
    return {
        "heldout_tokens": sum(t.numel() for t in batches),
        "reconstruction": reconstruction_stats(replacement, batches),
        "loss": loss_recovered(replacement, batches),
        "families": family_probes(replacement, tokenizer, n_docs),
    }


def _recovered(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1%}"


def summary_lines(r: dict) -> list[str]:
    lines = ["layer  kind        FVU     L0   dead   CE spliced  recovered"]
    for name in SUBLAYERS:
        for l, (rec, loss) in enumerate(
            zip(r["reconstruction"][name], r["loss"]["spliced_alone"][name], strict=True)
        ):
            lines.append(
                f"{l:5d}  {name:10s} {rec['fvu']:6.3f} {rec['l0']:6.1f} {rec['dead_fraction']:6.1%}"
                f"   {loss['ce']:8.3f}  {_recovered(loss['loss_recovered']):>9s}"
            )
    a = r["loss"]["all_layers"]
    lines.append(
        f"all layers replaced: CE {a['ce']:.3f} (original {r['loss']['ce_original']:.3f}, "
        f"mean-ablated {a['ce_mean_ablated']:.3f}), KL {a['kl']:.3f}, "
        f"loss recovered {_recovered(a['loss_recovered'])}"
    )
    alone = [x for k in SUBLAYERS for x in r["loss"]["spliced_alone"][k]]
    if any(math.isnan(x["loss_recovered"]) for x in [a, *alone]):
        lines.append(f"n/a: mean-ablating costs under {MIN_GAP} nats there, so no part of it can "
                     "be said to be recovered")  # fmt: skip
    for key in ("addition", "induction_loss_ratio", "successor", "subtoken_induction"):
        o, s = r["families"]["original"][key], r["families"]["sparse"][key]
        lines.append(f"{key:22s} original {o:.3f}  fully sparsified {s:.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m replacement.evaluate",
        description="Reconstruction, sparsity and loss recovered of a replacement set.",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement", type=path_text, required=True, help="replacement set directory"
    )
    parser.add_argument("--batches", type=int, default=8, help="held-out batches of 16 rows")
    parser.add_argument("--docs", type=int, default=100, help="documents per family (probes)")
    parser.add_argument("--json", type=file_arg, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if not (1 <= args.batches <= MAX_BATCHES and 1 <= args.docs <= MAX_DOCS):
        # a huge count would build its batches for hours (or run out of memory) without a word
        raise UserError(f"--batches must be between 1 and {MAX_BATCHES} and --docs between 1 "
                        f"and {MAX_DOCS}, got {args.batches} and {args.docs}")  # fmt: skip
    from toy_models.checkpoint import RECORD_FILE, model_files
    from toy_models.files import check_not_input, check_writable_file
    from toy_models.records import write_measured_json
    from toy_models.zoo import resolve_model_dir

    from .train import SET_FILE

    directory = resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    replacement_dir = Path(args.replacement)
    if not (replacement_dir / SET_FILE).is_file():
        raise UserError(f"--replacement {args.replacement}: no {SET_FILE} there")
    if args.json:  # before the evaluation, not after it
        # the model's files, and the set's: its config, its record, its layers' weights
        inputs = [replacement_dir / SET_FILE, replacement_dir / RECORD_FILE]
        inputs += [*model_files(directory), *replacement_dir.glob("*.safetensors")]
        check_not_input(args.json, inputs, "--json")
        check_writable_file(args.json, "--json", RESULT_KEYS)  # saved work: refused
    from toy_models.zoo import load_pretrained

    from .model import ReplacementModel

    model, tokenizer = load_pretrained(args.model)
    replacement = ReplacementModel.load(args.replacement, model)
    results = evaluate_replacement(replacement, tokenizer, args.batches, args.docs)
    # Weights that load (finite) but overflow in use: the spliced model's own loss is not a
    # number, and no figure of it means anything. (A ratio of a degenerate model, such as the
    # induction ratio of a model without induction, may be NaN on its own: that stays.)
    spliced = results["loss"]["all_layers"]
    bad = [
        f"loss.all_layers.{k}"
        for k, v in spliced.items()
        if k != "loss_recovered" and not math.isfinite(v)
    ]  # (that one: not measured)
    if bad:
        named = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise UserError(f"{args.replacement}: the set gives non-finite figures ({named}): its "
                        "weights overflow")  # fmt: skip
    print("\n".join(summary_lines(results)))
    if args.json:
        results = {"model": args.model, "replacement": args.replacement, **results}
        write_measured_json(args.json, results)
    return 0


if __name__ == "__main__":
    run_cli(main)
