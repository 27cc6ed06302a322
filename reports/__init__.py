"""What a researcher reads: labels, drawings, the offline viewer, head taxonomy (DESIGN.md 6).

- ``reports.labels``: readable node labels, made from the Graph's structured fields.
- ``reports.layout``: what one drawing shows (``select``) and where (``layout``).
- ``reports.graphviz``: ``to_dot`` (DOT text of a selection) and ``render`` (``.dot`` always,
  SVG/PDF/PNG when Graphviz's ``dot`` is installed).
- ``reports.viewer`` / ``reports.html``: ``graph.html``, one self-contained page that draws the
  graph itself (no network, no Graphviz needed) with a clickable panel, search, budget
  controls, pins and supernodes, plus the node table; ``reports.browser`` drives headless
  Chromium for its tests.
- ``reports.outputs``: every file of one graph, written atomically; a failed render loses
  nothing else.
- ``reports.heads``: the Lorsa head taxonomy (``python -m reports.heads``).
"""
