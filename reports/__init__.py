"""Graphviz reports, HTML pages, head-type tables and plots (see DESIGN.md section 6)."""
