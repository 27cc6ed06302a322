"""Lorsa layers, transcoders, their training, and the replacement model (DESIGN.md section 4)."""

# What replaces each block's attention, then its MLP: the hook prefixes of the replacement model
# (``blocks.{l}.lorsa.*``, ``blocks.{l}.transcoder.*``) and the kinds of its units.
SUBLAYERS = ("lorsa", "transcoder")
