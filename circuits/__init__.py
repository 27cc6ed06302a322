"""Attribution graphs through frozen QK patterns, pruning, global circuits (DESIGN.md section 5)."""
