"""kvcache (see DESIGN.md)."""
