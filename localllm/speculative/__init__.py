"""speculative (see DESIGN.md)."""
