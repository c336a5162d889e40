"""Custom Metal kernels for the MLX path (each op: kernel, pure-MLX reference, dispatcher)."""
