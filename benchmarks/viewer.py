"""Load time of graph.html's viewer on the largest default graph: a full-n_ctx held-out prompt
traced with ``python -m circuits.trace``, its page opened in headless Chromium.

    python benchmarks/viewer.py [--model default] [--runs 5] [--html runs/x/graph.html]

The figure is the time to the first drawn graph, measured in the browser: the page's
``viewer:drawn`` performance mark (after the JSON is parsed, the selection made, the layout
computed and the SVG built), in ms since navigation start, for a fresh Chromium each run
(median and max of ``--runs``); ``viewer:painted`` is the frame after it, on screen. Beside
them: when the viewer's script started, the load event, the page's size, what was drawn, and
the time one redraw takes at the default budget and with every node drawn. ``--html``
measures an existing page instead of tracing. Results go to
benchmarks/results/viewer.json (another model's to ``viewer_{model}.json``, a page's to
``viewer_page_{name}.json``, or ``--out``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import ArgumentParser, UserError, path_arg, positive_int, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RESULT_KEYS = frozenset({"model", "page_bytes", "first_draw_ms_median", "runs"})

MEASURE = """(async () => {
  for (let k = 0; k < 100 && !performance.getEntriesByName("viewer:painted").length; k++)
    await new Promise((r) => setTimeout(r, 50));
  const mark = (name) => {
    const m = performance.getEntriesByName(name)[0];
    return m ? m.startTime : null;
  };
  const nav = performance.getEntriesByType("navigation")[0];
  const timeRedraw = () => {
    const t0 = performance.now();
    viewer.update();
    return performance.now() - t0;
  };
  const result = {
    script_start_ms: mark("viewer:start"),
    first_draw_ms: mark("viewer:drawn"),
    first_paint_ms: mark("viewer:painted"),
    dom_content_loaded_ms: nav.domContentLoadedEventEnd,
    load_event_ms: nav.loadEventEnd,
    nodes: viewer.data.nodes.length,
    edges: viewer.data.links.source.length,
    drawn_nodes: viewer.drawnIds().length,
    drawn_edges: viewer.edges().length,
    redraw_default_ms: timeRedraw(),
  };
  viewer.state.budget = viewer.data.nodes.length;
  viewer.state.edgeMin = 0;
  result.redraw_everything_ms = timeRedraw();
  result.drawn_nodes_everything = viewer.drawnIds().length;
  result.drawn_edges_everything = viewer.edges().length;
  return result;
})()"""


def trace_page(model: str, out: Path) -> tuple[Path, dict]:
    """Trace the first held-out prompt as long as the model was trained on (its
    ``trained_positions``); the page and what the trace reported."""
    from benchmarks.trace_limits import full_context_prompt, graph_figures
    from toy_models.zoo import load_pretrained

    toy, tokenizer = load_pretrained(model)
    prompt = full_context_prompt(tokenizer, toy.trained_positions, offset=0)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "circuits.trace", "--prompt", prompt, "--model", model,
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["(nothing)"])[-1].removeprefix("error: ")
        raise UserError(f"the trace failed (exit {proc.returncode}): {said}")
    info = {
        "tokens": len(tokenizer.encode(prompt).ids),
        "trace_seconds": round(time.perf_counter() - start, 1),
        "graph": graph_figures(out),  # the page's graph, from its file's fields
    }
    return out / "graph.html", info


def measure(page: Path, runs: int) -> list[dict]:
    from reports.browser import Browser, BrowserError

    results = []
    for _ in range(runs):
        with Browser(width=1600, height=1000) as browser:  # fresh: nothing cached
            browser.load(page)
            try:
                error = browser.evaluate("document.getElementById('viewer').dataset.error || ''")
            except BrowserError:  # no #viewer element: some other page (a fuzz pass's)
                raise UserError(f"{page}: not a graph viewer page (no viewer in it)") from None
            if error:
                raise UserError(f"{page}: the viewer failed: {error}")
            results.append(browser.evaluate(MEASURE))
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--runs", type=positive_int, default=5)
    parser.add_argument("--html", type=path_arg, help="measure this page instead of tracing one")
    parser.add_argument(
        "--out",
        type=path_arg,
        help="results file (default: viewer.json for "
        "the default model's trace, else named by the model or the page)",
    )
    args = parser.parse_args(argv)
    if args.html is not None and not args.html.is_file():
        parser.error(f"--html {args.html}: no such page")
    from reports.browser import find_chromium
    from toy_models.files import check_writable_file, write_json_atomic

    path = args.out or RESULTS / (
        f"viewer_page_{args.html.stem}.json"
        if args.html is not None
        else "viewer.json"
        if args.model == "default"
        else f"viewer_{Path(args.model).name}.json"
    )  # another page or model no longer replaces the default's figures
    check_writable_file(path, "--out", RESULT_KEYS)
    if find_chromium() is None:
        raise UserError("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        if args.html is not None:
            page, info = args.html, {"page": str(args.html)}
        else:
            page, info = trace_page(args.model, Path(tmp) / "trace")
        size = page.stat().st_size
        runs = measure(page, args.runs)
    first = [r["first_draw_ms"] for r in runs]
    painted = [r["first_paint_ms"] for r in runs if r["first_paint_ms"] is not None]
    result = {
        "model": args.model,
        **info,
        "page_bytes": size,
        "first_draw_ms_median": round(statistics.median(first), 1),
        "first_draw_ms_max": round(max(first), 1),
        "first_paint_ms_median": round(statistics.median(painted), 1) if painted else None,
        "redraw_default_ms_median": round(
            statistics.median(r["redraw_default_ms"] for r in runs), 1
        ),
        "redraw_everything_ms_median": round(
            statistics.median(r["redraw_everything_ms"] for r in runs), 1
        ),
        "runs": runs,
        "command": "python benchmarks/viewer.py"
        + (f" --model {args.model}" if args.model != "default" else ""),
    }
    write_json_atomic(path, result)
    print(f"time to first drawn graph: {result['first_draw_ms_median']} ms (median of "
          f"{len(runs)}), page {size / 1e6:.2f} MB; wrote {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    run_cli(main)
