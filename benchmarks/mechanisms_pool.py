"""Pool draws of the mechanism benchmark: every rate of ``benchmarks/mechanisms.py`` over the
right prompts of several draws at once, computed from their records as one draw's are
(``mechanisms.family_rates``), with each draw's ``key`` and ``key_named`` beside them.

    python benchmarks/mechanisms_pool.py [FILE ...] [--out FILE]

Default files: ``benchmarks/results/mechanisms_default.json`` and every
``mechanisms_default_seed*.json`` beside it (the README's six draws); default output
``benchmarks/results/mechanisms_pooled_default.json``. The files must be draws of one model,
replacement set, mode and target, with distinct seeds and the same families; anything else is
refused, and so is a file whose records are not the benchmark's.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mechanisms import RESULTS, family_rates  # noqa: E402

from toy_models.cli import ArgumentParser, UserError, file_arg, path_arg, run_cli  # noqa: E402
from toy_models.records import is_finite_number  # noqa: E402

SAME = (
    "model",
    "replacement",
    "mode",
    "target",
    "concepts",
    "prompts_per_family",
    "min_correct",
    "max_prompts",
)  # what every pooled draw must share
PER_DRAW = ("key", "key_named")  # rates also given draw by draw


def default_files() -> list[Path]:
    first = RESULTS / "mechanisms_default.json"
    return [first, *sorted(RESULTS.glob("mechanisms_default_seed*.json"))]


def _check_record(record, where: str) -> None:
    """What ``family_rates`` reads of a record, checked before any of it is read."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a record is not a JSON object")
    if not isinstance(record.get("correct"), bool) or not isinstance(record.get("source"), str):
        raise UserError(f"{where}: a record lacks its 'correct' (true/false) or 'source'")
    if not is_finite_number(record.get("cpu_seconds")):
        raise UserError(f"{where}: a record lacks its 'cpu_seconds'")
    if not isinstance(record.get("untrained_positions"), list):
        raise UserError(f"{where}: a record lacks its 'untrained_positions'")
    counts = ("checks", "agree_free", "agree_frozen", "qk_writer_checks", "qk_writer_agree_free")
    for key, value in record.items():
        if key in counts and not (is_finite_number(value) and value >= 0):
            raise UserError(f"{where}: a record's {key!r} is not a count")
    within = (
        ("agree_free", "checks"),
        ("qk_writer_agree_free", "qk_writer_checks"),
        ("qk_writer_checks", "checks"),
    )  # (a part, its whole)
    if any(record.get(part, 0) > record.get(whole, 0) for part, whole in within):
        raise UserError(f"{where}: a record agrees in more checks than it has")
    for side in ("query_source", "key_source"):
        source = record.get(side)
        if source is None:
            continue
        if not isinstance(source, dict) or not all(
            is_finite_number(source.get(k)) for k in ("tested", "rank", "score")
        ):  # fmt: skip
            raise UserError(f"{where}: a record's {side!r} lacks its tested, rank or score")


def read_draw(path: Path) -> dict:
    """A results file of ``benchmarks/mechanisms.py``, checked (one line on anything else)."""
    from toy_models.files import MAX_RECORD_BYTES
    from toy_models.records import parse_json

    try:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        if path.stat().st_size > 16 * MAX_RECORD_BYTES:
            raise UserError(f"{path}: too large for a results file of the benchmark")
        data = parse_json(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("families"), dict):
        raise UserError(f"{path}: not a results file of benchmarks/mechanisms.py")
    if not isinstance(data.get("seed"), int) or isinstance(data.get("seed"), bool):
        raise UserError(f"{path}: no seed")
    for family, result in data["families"].items():
        records = result.get("records") if isinstance(result, dict) else None
        if not isinstance(records, list):
            raise UserError(f"{path}: family {family!r} has no records")
        for record in records:
            _check_record(record, f"{path} ({family})")
    return data


def pool(paths: list[Path]) -> dict:
    """The pooled rates of the draws in ``paths`` (``read_draw`` each; they must agree)."""
    if not paths:
        raise UserError("no results files to pool")
    draws = [read_draw(p) for p in paths]
    first = draws[0]
    for path, draw in zip(paths[1:], draws[1:], strict=True):
        for key in SAME:
            if draw.get(key) != first.get(key):
                raise UserError(
                    f"{path}: its {key} {draw.get(key)!r} is not {first.get(key)!r} of "
                    f"{paths[0]}: pool draws of one setting"
                )
        if set(draw["families"]) != set(first["families"]):
            raise UserError(f"{path}: its families differ from those of {paths[0]}")
    seeds = [d["seed"] for d in draws]
    if len(set(seeds)) < len(seeds):
        raise UserError(f"seeds {seeds}: a draw is given twice")
    families = {}
    for family in first["families"]:
        records = [r for d in draws for r in d["families"][family]["records"]]
        rates = family_rates(family, records)
        rates["per_draw"] = {
            key: [family_rates(family, d["families"][family]["records"])[key] for d in draws]
            for key in PER_DRAW
        }
        families[family] = rates
    out = {key: first.get(key) for key in SAME}
    return out | {"draws": [str(p) for p in paths], "seeds": seeds, "families": families}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=path_arg,
                        help="results files of benchmarks/mechanisms.py (default: the default "
                        "model's draws in benchmarks/results/)")  # fmt: skip
    parser.add_argument("--out", type=file_arg,
                        help="result file (default benchmarks/results/"
                        "mechanisms_pooled_default.json)")  # fmt: skip
    args = parser.parse_args(argv)
    from toy_models.files import check_writable_file, write_json_atomic

    out = args.out or RESULTS / "mechanisms_pooled_default.json"
    paths = args.files or default_files()
    if any(out.resolve() == p.resolve() for p in paths):
        raise UserError(f"--out {out}: is one of the draws read")
    check_writable_file(out, "--out", frozenset({"draws", "seeds", "families"}))
    result = pool(paths)
    for family, rates in result["families"].items():
        shown = {k: v for k, v in rates.items() if k not in ("by_source", "reason_misses")}
        print(family, shown)
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
