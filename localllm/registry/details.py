"""What a pulled model's files say about it, for `show`: architecture, parameter count,
context length, chat template, licence. GGUF facts come from its header (without
loading weights); MLX facts from `config.json`, `tokenizer_config.json` and the
safetensors headers (4-bit packed weights are counted as the parameters they hold).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    parameters: int
    context_length: int
    chat_template: str | None
    license: str | None


def gguf_facts(parts: list[Path]) -> ModelFacts:
    """Facts from a GGUF file; for a split model, `parts` are all its files in order."""
    from localllm.formats.gguf import inspect_gguf, read_header

    info = inspect_gguf(parts[0])
    parameters = info.n_params
    for part in parts[1:]:
        _, tensors = read_header(part)
        for _, shape, _, _ in tensors:
            n = 1
            for d in shape:
                n *= d
            parameters += n
    license_ = info.metadata.get("general.license")
    return ModelFacts(
        architecture=info.architecture,
        parameters=parameters,
        context_length=info.context_length,
        chat_template=info.chat_template,
        license=str(license_) if license_ else None,
    )


def mlx_facts(folder: Path) -> ModelFacts:
    config = _read_json(folder / "config.json")
    arch = str(config.get("model_type") or (config.get("architectures") or [""])[0])
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    context = config.get("max_position_embeddings") or text_config.get("max_position_embeddings") or 0
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = int(quant.get("bits", 0) or 0) if isinstance(quant, dict) else 0
    parameters = sum(_safetensors_parameters(p, bits) for p in sorted(folder.glob("*.safetensors")))
    return ModelFacts(arch, parameters, int(context), _mlx_chat_template(folder), None)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _mlx_chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        template = _read_json(folder / name).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: the default one
            for item in template:
                if isinstance(item, dict) and item.get("name") == "default":
                    return str(item.get("template"))
    return None


def _safetensors_parameters(path: Path, bits: int) -> int:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                return 0
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return 0
    total = 0
    for name, meta in header.items():
        if name == "__metadata__" or not isinstance(meta, dict):
            continue
        base = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{base}.weight" in header:
            continue  # quantization side tables, not parameters
        numel = 1
        for d in meta.get("shape", []):
            numel *= int(d)
        if bits and meta.get("dtype") == "U32" and f"{base}.scales" in header:
            numel = numel * 32 // bits  # packed: each uint32 holds 32/bits weights
        total += numel
    return total
