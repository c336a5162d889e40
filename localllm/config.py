"""Settings: one frozen object built once (defaults < config file < environment < flags).

Paths come from platformdirs; `LOCALLLM_HOME` moves all data (models, conversations,
KV snapshots) under one folder, which tests use to stay out of the user's real data.
The config file is TOML at `<config dir>/config.toml`, with the same keys as `Settings`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from localllm.errors import UserError
from localllm.types import DraftParams

KV_TYPES = ("f16", "q8_0")
BACKENDS = ("auto", "llamacpp", "mlx")
OVERFLOW_POLICIES = ("refuse", "drop-oldest")
FLASH_ATTN_MODES = ("auto", "on", "off")


def physical_cores() -> int:
    """Physical cores, not hyper-threads: llama.cpp decode is memory-bound and slows down
    when two threads share a core."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and phys is not None:
                    cores.add((phys, core))
                    phys = core = None
            if phys is not None:
                cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    if hasattr(os, "sysconf"):
        try:  # macOS reports physical cores through sysctl; os.cpu_count() counts logical ones.
            import subprocess

            out = subprocess.run(
                ["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True, timeout=2
            )
            if out.returncode == 0 and out.stdout.strip().isdigit():
                return int(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return max(1, (os.cpu_count() or 2) // 2)


def _default_home() -> Path:
    env = os.environ.get("LOCALLLM_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("localllm", appauthor=False))


def _default_cache() -> Path:
    env = os.environ.get("LOCALLLM_HOME")
    if env:
        return Path(env).expanduser() / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("localllm", appauthor=False))


def _config_file() -> Path:
    env = os.environ.get("LOCALLLM_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("localllm", appauthor=False)) / "config.toml"


@dataclass(frozen=True)
class Settings:
    """Everything that is configured rather than asked per request."""

    home: Path
    cache_dir: Path
    backend: str = "auto"
    threads: int = 0  # 0: physical cores
    ctx_size: int = 4096
    # Whether ctx_size was asked for (config, environment, flag, a chat's settings, a
    # request) rather than left at the default: only an asked size goes past the
    # model's training context (with a warning); the default stops there.
    ctx_size_asked: bool = False
    kv_type: str = "f16"
    # "auto": measured once per model file and machine (cpu_backend/attention_calibration.py)
    flash_attn: str = "auto"
    # Requests decoding together (continuous batching); more wait their turn. 0: chosen
    # from the machine (`resolved_parallel`); the CLI's run and chat serve one at a time.
    parallel: int = 0
    # llama.cpp: layers offloaded to the GPU (Metal on Apple Silicon) where the build
    # supports it; -1 all of them, 0 CPU only. Ignored by a CPU-only build.
    gpu_layers: int = -1
    prefix_cache: bool = True  # reuse KV across turns and requests (localllm.kvcache)
    snapshot_cap_mb: int = 2048  # disk for KV snapshots; 0 turns snapshots off
    overflow: str = "refuse"  # or "drop-oldest": what a chat too long for the context does
    # Speculative decoding (localllm.speculative): auto | prompt-lookup | none, the most
    # tokens a draft proposes, the longest n-gram prompt lookup matches.
    draft: str = "auto"
    draft_max: int = 8
    draft_ngram: int = 3
    verbose: bool = False
    debug: bool = False

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def snapshots_dir(self) -> Path:
        return self.cache_dir / "kv-snapshots"

    @property
    def resolved_parallel(self) -> int:
        """`parallel`, or from the machine: 4 (llama-server's default) where there are 4
        physical cores or more, else 2. Batched decoding reads the weights once per step
        for all sequences, so a few sequences cost little more than one on a
        memory-bound CPU; each takes a full context of KV (see cpu_backend/loader.py)."""
        return self.parallel if self.parallel > 0 else (4 if physical_cores() >= 4 else 2)

    @property
    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else physical_cores()

    def validate(self) -> "Settings":
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.kv_type not in KV_TYPES:
            raise UserError(f"unknown KV cache type {self.kv_type!r}: choose one of {', '.join(KV_TYPES)}")
        if self.ctx_size < 16:
            raise UserError(f"--ctx-size {self.ctx_size} is too small: use at least 16 tokens")
        if self.flash_attn not in FLASH_ATTN_MODES:
            raise UserError(f"unknown --flash-attn {self.flash_attn!r}: choose one of {', '.join(FLASH_ATTN_MODES)}")
        if self.flash_attn == "off" and self.kv_type != "f16":
            raise UserError(f"--flash-attn off cannot be used with --kv-type {self.kv_type}: llama.cpp needs flash "
                            "attention for a quantized KV cache; use --kv-type f16 or --flash-attn auto")
        if self.overflow not in OVERFLOW_POLICIES:
            raise UserError(f"unknown overflow policy {self.overflow!r}: choose one of {', '.join(OVERFLOW_POLICIES)}")
        if self.gpu_layers < -1:
            raise UserError(f"--gpu-layers {self.gpu_layers} must be -1 (all), 0 (CPU only) or a number of layers")
        if self.parallel < 0 or self.parallel > 64:
            raise UserError(f"--parallel {self.parallel} must be 0 (auto) or between 1 and 64")
        if self.threads < 0:
            raise UserError(f"--threads {self.threads} must be 0 (auto) or a positive number")
        problem = self.draft_params.problem()
        if problem:
            raise UserError(f"{problem} (--draft, --draft-max, --draft-ngram)")
        return self

    @property
    def draft_params(self) -> DraftParams:
        """The speculative decoding a request gets unless it asks otherwise."""
        return DraftParams(self.draft, self.draft_max, self.draft_ngram)


_ENV_KEYS = {
    "backend": "LOCALLLM_BACKEND",
    "threads": "LOCALLLM_THREADS",
    "ctx_size": "LOCALLLM_CTX_SIZE",
    "kv_type": "LOCALLLM_KV_TYPE",
    "flash_attn": "LOCALLLM_FLASH_ATTN",
    "parallel": "LOCALLLM_PARALLEL",
    "gpu_layers": "LOCALLLM_GPU_LAYERS",
    "draft": "LOCALLLM_DRAFT",
}


def load_settings(**flags) -> Settings:
    """Build the settings: defaults, then the config file, then LOCALLLM_* variables,
    then the flags given here (None means 'not given')."""
    settings = Settings(home=_default_home(), cache_dir=_default_cache())
    types = {f.name: f.type for f in fields(Settings)}
    layers: list[dict] = []
    path = _config_file()
    if path.is_file():
        try:
            layers.append(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {path} is not valid TOML ({e}): fix or remove it") from None
    layers.append({k: os.environ[v] for k, v in _ENV_KEYS.items() if v in os.environ})
    layers.append({k: v for k, v in flags.items() if v is not None})
    for layer in layers:
        for key, value in layer.items():
            if key not in types or key == "ctx_size_asked":
                raise UserError(f"unknown setting {key!r} (in {path}): known settings are {', '.join(types)}")
            try:
                if types[key] in ("int", int):
                    value = int(value)
                elif types[key] in ("bool", bool) and isinstance(value, str):
                    value = value.lower() in ("1", "true", "yes", "on")
                elif types[key] in ("Path", Path):
                    value = Path(value).expanduser()
            except ValueError:
                raise UserError(f"setting {key} = {value!r} is not a valid number") from None
            settings = replace(settings, **{key: value})
    if any("ctx_size" in layer for layer in layers):
        settings = replace(settings, ctx_size_asked=True)
    return settings.validate()
