"""MLX model folders (what `pull --format mlx` stores, as mlx-community publishes them):
`config.json` plus `*.safetensors` with Hugging Face tensor names, plain or quantized by
mlx-lm (`X.weight` packed uint32 with `X.scales` and `X.biases`, bits and group size from
the config's `quantization`, per-module overrides included), and the tokenizer files
(`tokenizer.json` or `tokenizer.model`, chat template in `tokenizer_config.json` or
`chat_template.jinja`), which the tokenizer layer reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from localllm.errors import ModelFileError
from localllm.models.architectures import architecture_module
from localllm.types import ModelInfo

# config.json model_type -> the GGUF architecture name the rest of localllm uses.
GGUF_NAMES = {"mistral": "llama", "gemma3_text": "gemma3"}


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{folder}: no config.json in this folder: give a GGUF file or an MLX model folder") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not readable JSON ({e}): download the model again") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: not a model config: download the model again")
    return config


def _quantization(config: dict) -> dict:
    quant = config.get("quantization") or config.get("quantization_config") or {}
    if quant and quant.get("mode", "affine") != "affine":
        raise ModelFileError(f"MLX quantization mode {quant.get('mode')!r} is not supported (affine is)")
    return quant


def inspect_folder(path: str | Path) -> ModelInfo:
    """Check an MLX folder (config, weights present, architecture in the table) and
    describe it, without reading the weights."""
    from localllm.tokenizer.templates import find_chat_template

    folder = Path(path)
    config = read_config(folder)
    model_type = str(config.get("model_type", ""))
    architecture_module(model_type, str(folder))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{folder}: no .safetensors weights in this folder: the download is incomplete")
    text = config.get("text_config") or config
    quant = _quantization(config)
    size = sum(f.stat().st_size for f in files)
    return ModelInfo(
        path=str(folder),
        architecture=GGUF_NAMES.get(model_type, model_type),
        name=folder.name,
        context_length=int(text.get("max_position_embeddings", 0) or 0),
        vocab_size=int(text.get("vocab_size", 0) or 0),
        n_params=0,
        file_type=f"MLX {quant['bits']}-bit" if quant else str(config.get("torch_dtype", "F16")).upper(),
        chat_template=find_chat_template(folder),
        metadata={"_weights_bytes": size, "mlx.model_type": model_type, "_config": config},
    )


def load_folder(path: str | Path, dtype=None):
    """(model, weight bytes) for an MLX folder."""
    import mlx.core as mx

    from localllm.models.weights import AffineWeight, DenseWeight

    folder = Path(path)
    config = read_config(folder)
    module = architecture_module(str(config.get("model_type", "")), str(folder))
    quant = _quantization(config)
    raw: dict = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            raw.update(mx.load(str(file)))
        except Exception as e:  # MLX raises a bare RuntimeError/ValueError on a bad file
            raise ModelFileError(f"{file}: cannot read these weights ({e}): download the model again") from None

    combined: dict = {}
    for name, value in raw.items():
        stem, _, suffix = name.rpartition(".")
        if suffix in ("scales", "biases"):
            continue
        if suffix == "weight" and stem + ".scales" in raw:
            spec = quant.get(stem) if isinstance(quant.get(stem), dict) else quant
            if "bits" not in spec:
                raise ModelFileError(f"{folder}: {stem} is quantized but config.json has no quantization bits")
            value = AffineWeight(value, raw[stem + ".scales"], raw.get(stem + ".biases"), int(spec["bits"]),
                                 int(spec.get("group_size", 64)))
        combined[name] = value
    tensors = module.sanitize(combined)
    tensors = {k: DenseWeight(v) if isinstance(v, mx.array) and v.ndim == 2 else v for k, v in tensors.items()}
    args = module.from_config(config)
    model = module.Model(args, tensors, dtype or mx.float32)
    arrays = [a for v in tensors.values() for a in ([v] if isinstance(v, mx.array) else _arrays(v))]
    mx.eval(*arrays)
    return model, sum(a.nbytes for a in arrays)


def _arrays(weight):
    from localllm.models.weights import weight_arrays

    return weight_arrays(weight)
