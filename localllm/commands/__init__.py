"""One module per CLI command family; imported lazily by `localllm.cli`."""
