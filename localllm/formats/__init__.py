"""Model file formats read without a backend: the GGUF header reader (and, with the MLX
path, model folders). Format-neutral: the registry, the preflight and every backend may
import it; it imports nothing from a backend folder or library."""
