"""localllm: local LLM inference on MLX (Apple Silicon) or llama.cpp (CPU).

Importing this package is cheap on purpose: backend libraries (llama_cpp, mlx) and
frontends (Textual, the ASGI server) are imported only where they are used.
"""

__version__ = "0.1.0"
