"""Error analysis of a replacement set (issue 13, item 3): where each layer's Lorsa and
transcoder err, and whether the Lorsa error and an attention-output SAE's error share a
direction.

    python benchmarks/error_analysis.py                      # default model, all layers
    python benchmarks/error_analysis.py --quick              # a smoke run

Per layer and kind, on ``--rows`` held-out documents (``reports.errors``): the error's share of
the output variance by task family, token role and position; how few tokens carry half of it
and which tokens; and, against a TopK SAE on the attention output with the Lorsa layer's width
and K (``replacement.attn_sae``, ``--sae-steps`` streamed steps of the replacement recipe, all
chosen layers at once), the mean cosine of the two errors on the same tokens and the variance
one explains of the other. The SAEs are kept under ``--work`` and reused by a rerun with the
same settings.

Writes ``--json`` (default benchmarks/results/error_analysis_{model}.json) and the report
(``errors.md``, ``errors.png``) to ``--report``. Budget on 2 idle cores: the SAEs take about
``sae_steps x 0.25 s`` (4 layers), the analysis itself well under a minute for 256 rows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from reports.results_cli import add_results_args, results_paths  # noqa: E402
from toy_models.cli import ArgumentParser, UserError, count_arg, path_arg, path_text, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# The keys of the JSON object written to the results file: a file there without them is
# not an earlier run's results, and is refused rather than replaced.
RESULT_KEYS = frozenset({"model", "replacement", "sae", "layers", "seconds"})
QUICK = {"rows": 16, "sae_steps": 4}


def parse_args(argv):
    parser = ArgumentParser(
        prog="python benchmarks/error_analysis.py",
        description="Where the replacement layers err (by family, token role, position, token) "
        "and whether Lorsa and attention-SAE errors share a direction; JSON, markdown, PNG.",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement",
        type=path_text,
        help="replacement set directory (default: the one shipped with --model)",
    )
    parser.add_argument("--layers", default="all", help="'all' or layers such as 1 or 1,2")
    parser.add_argument("--rows", type=int, default=256, help="held-out documents (256)")
    parser.add_argument(
        "--seed", type=count_arg, default=4242, help="held-out document stream seed"
    )
    parser.add_argument(
        "--sae-steps", type=int, default=1000, help="attention-SAE training steps (1000; 0: none)"
    )
    parser.add_argument(
        "--work", type=path_arg, default=Path("runs/error-analysis"), help="where the SAEs are kept"
    )
    add_results_args(parser, QUICK)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.rows, args.sae_steps = QUICK["rows"], QUICK["sae_steps"]
    if args.rows <= 0 or args.sae_steps < 0:
        raise UserError("--rows must be positive and --sae-steps >= 0")
    from replacement.train import parse_layers
    from toy_models.files import check_writable_dir
    from toy_models.zoo import resolve_model_dir

    layers = parse_layers(args.layers)
    resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    if args.replacement is not None and not (Path(args.replacement) / "replacement.json").is_file():
        raise UserError(f"--replacement {args.replacement}: no replacement.json there")
    out_json, report_dir = results_paths(args, "error_analysis", RESULTS, RESULT_KEYS)
    t0 = time.perf_counter()
    from replacement.model import load_pretrained
    from reports.errors import analyse_errors, findings, write_error_report
    from toy_models.files import write_json_atomic

    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    n_layers = replacement.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else layers
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise UserError(f"--layers {bad} out of range: the model has {n_layers} layers")
    t_load = time.perf_counter()
    lorsa_cfg = replacement.lorsas[layers[0]].cfg
    saes, sae_s = {}, 0.0
    if args.sae_steps:
        check_writable_dir(args.work, "--work")
        from replacement.attn_sae import kept_attn_saes

        saes, sae_s = kept_attn_saes(
            replacement.model, tokenizer, layers, lorsa_cfg.n_ov_heads, lorsa_cfg.top_k,
            args.sae_steps, args.work, quiet=args.quiet,
        )  # fmt: skip
    t_sae = time.perf_counter()
    results = analyse_errors(replacement, tokenizer, layers, args.rows, saes=saes, seed=args.seed)
    t_end = time.perf_counter()
    results = {
        "model": args.model,
        "replacement": args.replacement or "shipped",
        "quick": args.quick,
        "sae": {
            "width": lorsa_cfg.n_ov_heads,
            "top_k": lorsa_cfg.top_k,
            "steps": args.sae_steps,
            "train_s": round(sae_s, 1),
        },  # fmt: skip
        **results,
        "seconds": {
            "load": round(t_load - t0, 1),
            "saes": round(t_sae - t_load, 1),
            "analysis": round(t_end - t_sae, 1),
            "total": round(t_end - t0, 1),
        },
    }
    write_json_atomic(out_json, results)
    written = write_error_report(results, report_dir)
    if args.quick:
        print("[SMOKE RUN: figures mean nothing]")
    print("\n".join(findings(results)))
    for path in [out_json, *written]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
