"""Tests of the terminal chat app (localllm.tui)."""
