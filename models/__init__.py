"""MLX model architectures, one file each."""
