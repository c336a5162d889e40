"""tui (see DESIGN.md)."""
