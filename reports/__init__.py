"""Graphviz reports, HTML pages, head-type tables and plots (see DESIGN.md section 6).

- ``reports.graphviz``: ``to_dot`` (DOT text of a graph) and ``render`` (``.dot`` always, and
  SVG/PDF/PNG when Graphviz's ``dot`` is installed).
- ``reports.html``: ``write_html``, one self-contained page with the drawing and a node table.
"""
