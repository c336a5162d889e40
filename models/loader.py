"""The MLX row of the backend table: can MLX run here, which files it takes (GGUF files
and MLX folders whose architecture is in `architectures.ARCHITECTURES` and whose tensor
types `gguf_repack` can hold), what a load needs in memory, and the load itself.

Importing this module does not import mlx; `load` does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from localllm.backend.preflight import OVERHEAD_BYTES, MemoryEstimate
from localllm.errors import ModelFileError
from localllm.types import ModelInfo

# Bytes per weight in memory over bytes in the file, per GGUF tensor type, where the
# repack differs: K-quant scales become float32 per 32 (4.5 -> 6 bits, 5.5 -> 7), Q6_K
# two 6-bit matrices (6.56 -> 16 bits), Q2_K/Q3_K 4-bit with float32 scales.
GROWTH = {"Q4_K": 6 / 4.5, "Q5_K": 7 / 5.5, "Q6_K": 16 / 6.5625, "Q3_K": 6 / 3.4375, "Q2_K": 6 / 2.625}
CHUNK = 512  # prefill chunk (models/backend.py PREFILL_CHUNK)


def _architecture_table():
    from localllm.models.architectures import ARCHITECTURES, architecture_module

    return ARCHITECTURES, architecture_module


class MLXLoader:
    """`localllm.backend.protocol.BackendLoader` for MLX."""

    name = "mlx"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("mlx") is None:
            return ("the MLX backend needs the mlx package: `pip install mlx` on Apple Silicon "
                    "(elsewhere `pip install 'localllm[mlx]'` brings its CPU build), or use --backend llamacpp")
        return None

    def supports(self, architecture: str) -> bool:
        return architecture in _architecture_table()[0]

    def inspect(self, path: str) -> ModelInfo:
        if Path(path).is_dir():
            from localllm.models.mlx_folder import inspect_folder

            return inspect_folder(path)
        from gguf import GGMLQuantizationType

        from localllm.formats.gguf import describe_gguf, read_header, tensor_nbytes
        from localllm.formats.gguf_checks import require_weights
        from localllm.models.gguf_repack import SUPPORTED

        meta, tensors = read_header(path)
        info = describe_gguf(path, meta, tensors)
        require_weights(info)
        _architecture_table()[1](info.architecture, str(path))
        in_memory = 0.0
        for name, shape, ggml_type, _ in tensors:
            kind = GGMLQuantizationType(ggml_type)
            if kind not in SUPPORTED:
                raise ModelFileError(
                    f"{path}: tensor {name} is {kind.name}, which the MLX path cannot load: use --backend llamacpp"
                )
            in_memory += tensor_nbytes(shape, ggml_type) * GROWTH.get(kind.name, 1.0)
        info.metadata["_mlx_weights_bytes"] = int(in_memory)
        return info

    def estimate_memory(self, info: ModelInfo, ctx_size: int, kv_type: str, sequences: int = 1) -> MemoryEstimate:
        """weights: the repacked size (see GROWTH); KV: full-attention layers x KV heads
        x head size x (key + value) x context x bytes per value (sliding layers counted
        at full context: errs high); compute: one prefill chunk's attention scores over
        the whole context and its logits row, float32."""
        meta, arch = info.metadata, info.architecture
        config = meta.get("_config") or {}
        text = config.get("text_config") or config

        def num(gguf_key: str, config_key: str, default: int) -> int:
            value = meta.get(f"{arch}.{gguf_key}", text.get(config_key, default))
            return int(value) if isinstance(value, (int, float)) and value else default

        n_embd = num("embedding_length", "hidden_size", 0)
        n_head = num("attention.head_count", "num_attention_heads", 1)
        head_dim = num("attention.key_length", "head_dim", n_embd // n_head if n_head else 0)
        n_layer = num("block_count", "num_hidden_layers", 0)
        n_kv = num("attention.head_count_kv", "num_key_value_heads", n_head)
        ctx = min(ctx_size, info.context_length) if info.context_length else ctx_size
        per_value = {"f16": 2.0, "q8_0": 1.25}.get(kv_type, 4.0)
        kv = int(n_layer * n_kv * head_dim * 2 * ctx * per_value)
        weights = int(meta.get("_mlx_weights_bytes") or meta.get("_weights_bytes") or 0)
        compute = 4 * CHUNK * (n_head * ctx + (info.vocab_size or 32000) + 4 * n_embd)
        return MemoryEstimate(weights, kv * sequences, compute, OVERHEAD_BYTES, ctx, kv_type, sequences)

    def load(self, info: ModelInfo, settings):
        from localllm.models.backend import MLXBackend, compute_dtype
        from localllm.tokenizer.loader import load_tokenizer

        dtype = compute_dtype()
        if Path(info.path).is_dir():
            from localllm.models.mlx_folder import load_folder

            model, weights_bytes = load_folder(info.path, dtype)
        else:
            from localllm.models.architectures import load_gguf_model

            model, weights = load_gguf_model(info.path, dtype)
            weights_bytes = weights.nbytes()
        vocabulary = load_tokenizer(info.path)
        return MLXBackend(info, model, weights_bytes, vocabulary, ctx_size=settings.ctx_size, kv_type=settings.kv_type)


LOADER = MLXLoader()
