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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from first_view import measure_pages  # noqa: E402

from toy_models.cli import run_cli  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    return measure_pages(argv, __doc__.split("\n\n")[0], SIZES, MEASURE)


if __name__ == "__main__":
    run_cli(main)
