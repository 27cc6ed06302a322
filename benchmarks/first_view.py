"""How much of a graph.html's drawing the first view leaves off-screen, at several window sizes.

    python benchmarks/first_view.py runs/x/graph.html [runs/y/graph.html ...] [--sizes 1280x720]

Each page is opened in a fresh headless Chromium (``reports.browser``, scrollbars shown) at
each size, and read once the viewer has drawn and its start-up scroll has settled (two frames).
The part of the window the drawing can be seen in is the canvas's client box (its scrollbars
left out) clipped to the window; the drawing is the SVG at the zoom the page chose. Off-screen
is the drawing's width and height less that visible box's (0 where it fits): what a reader has
to scroll, across and down, to see the whole first view. Beside it: the zoom, the drawing's and
the visible box's sizes and how tall the controls above the canvas are. One JSON line per page
and size; ``--shots DIR`` also saves what each window shows as a PNG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import ArgumentParser, UserError, path_arg, run_cli  # noqa: E402

SIZES = "1920x1080,1400x900,1280x720"

MEASURE = """(async () => {
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  await frame(); await frame();
  const v = document.getElementById("viewer");
  const c = v.querySelector(".canvas"), s = v.querySelector("svg");
  const r = c.getBoundingClientRect(), m = v.querySelector(".main").getBoundingClientRect();
  const left = Math.max(r.left + c.clientLeft, 0), top = Math.max(r.top + c.clientTop, 0);
  const right = Math.min(r.left + c.clientLeft + c.clientWidth, innerWidth);
  const bottom = Math.min(r.top + c.clientTop + c.clientHeight, innerHeight);
  const w = s.width.baseVal.value, h = s.height.baseVal.value;
  const seenW = Math.max(0, right - left), seenH = Math.max(0, bottom - top);
  return {
    zoom: +(w / s.viewBox.baseVal.width).toFixed(3),
    drawing: [Math.round(w), Math.round(h)], visible: [Math.round(seenW), Math.round(seenH)],
    offscreen: [Math.max(0, Math.round(w - seenW)), Math.max(0, Math.round(h - seenH))],
    controls_px: Math.round(m.top - v.getBoundingClientRect().top),
    viewer_top_px: Math.round(v.getBoundingClientRect().top),
    drawn_nodes: v.querySelectorAll("svg g.node").length,
  };
})()"""


def size_arg(text: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(x) for x in part.split("x")) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 or min(s) < 100 for s in sizes):
        raise ValueError(f"--sizes {text!r}: WIDTHxHEIGHT[,WIDTHxHEIGHT...], each 100 or more")
    return sizes  # type: ignore[return-value]


def measure(page: Path, width: int, height: int, shot: Path | None = None, script=MEASURE) -> dict:
    """``script``'s result on ``page`` opened in a fresh headless Chromium at ``width`` x
    ``height`` (a page whose viewer failed is refused, naming its error); ``shot`` also saves
    what the window shows as a PNG."""
    from reports.browser import Browser

    with Browser(width=width, height=height) as browser:
        browser.load(page)
        error = browser.evaluate(
            "(document.getElementById('viewer') || {dataset: {error: 'no viewer'}}).dataset.error"
            " || ''"
        )
        if error:
            raise UserError(f"{page}: {error}")
        got = browser.evaluate(script)
        if shot is not None:
            browser.screenshot(shot)
        return got


def measure_pages(argv, description: str, sizes: str, script: str, shots: bool = False) -> int:
    """A page benchmark's command: ``script`` measured on each page given at each size of
    ``--sizes`` (default ``sizes``), one JSON line each; ``shots``: a ``--shots DIR`` option
    that saves each first view as ``DIR/PAGE-WxH.png``. This benchmark's and
    ``benchmarks/qk_labels.py``'s."""
    parser = ArgumentParser(description=description)
    parser.add_argument("pages", nargs="+", type=path_arg, help="graph.html files")
    parser.add_argument("--sizes", default=sizes, help=f"window sizes (default {sizes})")
    if shots:
        parser.add_argument(
            "--shots", type=path_arg, help="also save each first view as DIR/PAGE-WxH.png"
        )
    args = parser.parse_args(argv)
    try:
        windows = size_arg(args.sizes)
    except ValueError as err:
        parser.error(str(err))
    for page in args.pages:
        if not page.is_file():
            parser.error(f"{page}: no such page")
    from reports.browser import find_chromium

    if find_chromium() is None:
        raise UserError("chromium is not installed: apt-get install chromium")
    for page in args.pages:
        for width, height in windows:
            shot = None
            if shots and args.shots is not None:
                args.shots.mkdir(parents=True, exist_ok=True)
                name = page.stem if page.stem != "graph" else page.parent.name
                shot = args.shots / f"{name}-{width}x{height}.png"
            got = measure(page, width, height, shot, script)
            print(json.dumps({"page": str(page), "window": f"{width}x{height}", **got}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return measure_pages(argv, __doc__.split("\n\n")[0], SIZES, MEASURE, shots=True)


if __name__ == "__main__":
    run_cli(main)
