"""Lorsa layers, transcoders, their training, and the replacement model (DESIGN.md section 4)."""
