"""How many of a graph.html's q/k labels (the letters on dashed QK edges) a box covers.

    python benchmarks/qk_labels.py runs/x/graph.html [runs/y/graph.html ...] [--sizes 1280x800]

Each page is opened in a fresh headless Chromium (``reports.browser``) at each size and read
once the viewer has drawn its first view. A label is *covered* where its text's box meets a
node's box (the shape's, at the page's zoom): the boxes are drawn over the edges, so there the
letter is cut or hidden; *hidden* where its centre lies inside one. Beside them: labels that
meet another label, and how far each label's centre lies from its own edge (px, at the page's
zoom), the most over all labels. One JSON line per page and size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import ArgumentParser, UserError, path_arg, run_cli  # noqa: E402

SIZES = "1280x800,1400x900"

MEASURE = """(async () => {
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  await frame(); await frame();
  const v = document.getElementById("viewer");
  const rect = (e) => {
    const r = e.getBoundingClientRect();
    return [r.left, r.top, r.right, r.bottom];
  };
  const meet = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
  const inside = (x, y, b) => x > b[0] && x < b[2] && y > b[1] && y < b[3];
  const boxes = [...v.querySelectorAll("svg g.node .shape")].map(rect);
  const labels = [...v.querySelectorAll("svg g.qk-edge")].map((g) => {
    const t = g.querySelector(".qk-label"), p = g.querySelector("path"), r = rect(t);
    const cx = (r[0] + r[2]) / 2, cy = (r[1] + r[3]) / 2;
    // the distance from the label's centre to its edge, sampled along the path
    const m = p.getScreenCTM(), n = p.getTotalLength();
    let far = Infinity;
    for (let k = 0; k <= 200; k++) {
      const q = p.getPointAtLength((n * k) / 200);
      const x = m.a * q.x + m.c * q.y + m.e, y = m.b * q.x + m.d * q.y + m.f;
      far = Math.min(far, Math.hypot(x - cx, y - cy));
    }
    return { r, cx, cy, far };
  });
  let covered = 0, hidden = 0, clash = 0, far = 0;
  labels.forEach((l, j) => {
    if (boxes.some((b) => meet(l.r, b))) covered++;
    if (boxes.some((b) => inside(l.cx, l.cy, b))) hidden++;
    if (labels.some((o, k) => k !== j && meet(l.r, o.r))) clash++;
    far = Math.max(far, l.far);
  });
  const svg = v.querySelector("svg");
  return {
    labels: labels.length, covered, hidden, meeting_another: clash,
    farthest_from_edge_px: +far.toFixed(1),
    zoom: +(svg.width.baseVal.value / svg.viewBox.baseVal.width).toFixed(3),
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


def measure(page: Path, width: int, height: int) -> dict:
    from reports.browser import Browser

    with Browser(width=width, height=height) as browser:
        browser.load(page)
        error = browser.evaluate(
            "(document.getElementById('viewer') || {dataset: {error: 'no viewer'}}).dataset.error"
            " || ''"
        )
        if error:
            raise UserError(f"{page}: {error}")
        return browser.evaluate(MEASURE)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", type=path_arg, help="graph.html files")
    parser.add_argument("--sizes", default=SIZES, help=f"window sizes (default {SIZES})")
    args = parser.parse_args(argv)
    try:
        sizes = size_arg(args.sizes)
    except ValueError as err:
        parser.error(str(err))
    for page in args.pages:
        if not page.is_file():
            parser.error(f"{page}: no such page")
    from reports.browser import find_chromium

    if find_chromium() is None:
        raise UserError("chromium is not installed: apt-get install chromium")
    for page in args.pages:
        for width, height in sizes:
            got = measure(page, width, height)
            print(json.dumps({"page": str(page), "window": f"{width}x{height}", **got}), flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
