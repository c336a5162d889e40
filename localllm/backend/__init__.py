"""Backend protocol and selection: the one seam between the engine and a compute library."""
