"""Models in memory: loaded on demand in a worker thread, shared by the requests that
name them, unloaded after their keep-alive, evicted least-recently-used when a request
needs room (one model at a time by default).

Everything here runs on the event loop except loading and closing, which run in threads
so other endpoints keep answering meanwhile. A model is never unloaded while a request
holds a `Lease` on it; a request for another model waits until one is free.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from localllm.errors import UserError
from localllm.registry.names import is_path_syntax
from localllm.server.admission import EngineGate
from localllm.server.config import FOREVER
from localllm.server.errors import APIError, BadRequest, NotFound

LOADING, READY, UNLOADING = "loading", "ready", "unloading"


@dataclass(eq=False)
class ModelSlot:
    key: str  # the resolved file path (and context size when one was asked): two names for one file share a slot
    name: str  # its full name (`gemma3:latest` when asked for `gemma3`), or the path it was loaded from
    keep_alive_s: float | None  # its default: FOREVER for a preloaded model
    state: str = LOADING
    model: object = None  # localllm.runtime.LoadedModel once ready
    error: BaseException | None = None
    refs: int = 0
    load_s: float = 0.0
    loaded_at: float = 0.0  # wall-clock time it became ready
    last_used: float = 0.0
    expires_at: float | None = None  # wall-clock time, for /api/ps; None: never
    gate: EngineGate = field(default_factory=EngineGate)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    path: str = ""
    ctx_size: int = 0  # the context size a request asked for (Ollama's num_ctx); 0: the default
    aliases: set = field(default_factory=set)  # other names it was asked for by (`gemma3`)


class Lease:
    """A request's hold on a loaded model; `release` exactly once."""

    def __init__(self, manager: "ModelManager", slot: ModelSlot, load_wait_s: float):
        self._manager = manager
        self.slot = slot
        self.model = slot.model
        self.load_wait_s = load_wait_s
        self._released = False

    def release(self, keep_alive_s: float | None = None, given: bool = False) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self.slot, keep_alive_s, given)


class ModelManager:
    """`loader(name, settings)` and `resolver(name, settings)` are blocking callables
    (defaults: `localllm.runtime.load_model` and the registry's `resolve_model_path`)."""

    def __init__(self, settings, *, max_loaded: int = 1, keep_alive_s: float | None = 300.0,
                 loader: Callable | None = None, resolver: Callable | None = None,
                 on_load: Callable[[float], None] | None = None, chat_template: str | None = None,
                 allow_paths: bool = False, pinned: str | None = None, force_load: bool = False):
        self.settings = settings
        # Clients name pulled models; a file path only where the server was started with
        # --allow-model-paths, or the one it was started with (`--model PATH`).
        self.allow_paths = allow_paths
        self.pinned = pinned
        self.chat_template = chat_template
        self.force_load = force_load
        self.max_loaded = max_loaded
        self.keep_alive_s = keep_alive_s
        self._loader = loader
        self._resolver = resolver
        self._on_load = on_load
        self._slots: dict[str, ModelSlot] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    # -- lookups -------------------------------------------------------------------------

    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for slot in self._slots.values():
            out[slot.state] = out.get(slot.state, 0) + 1
        return out

    def find(self, name: str) -> ModelSlot | None:
        for slot in self._slots.values():
            if slot.name == name or slot.key == name or name in slot.aliases:
                return slot
        return None

    async def resolve(self, name: str) -> str:
        """The file a model name stands for, or a 404 that says what to do."""
        return (await self.resolve_named(name))[0]

    async def resolve_named(self, name: str) -> tuple[str, str, str]:
        """(the file a model name stands for, the model's full name, what its own settings
        are: "" for none, else a digest of them), or a 404."""
        paths_ok = self.allow_paths or name == self.pinned
        if not paths_ok and is_path_syntax(name):
            raise NotFound(f"model {name[:200]!r} is a file path, and this server serves pulled models only: use a "
                           "pulled name (GET /api/tags), or start the server with --allow-model-paths",
                           code="model_not_found", param="model")
        resolver = self._resolver
        if resolver is None:
            from localllm.registry import resolve_model

            def resolver(name, settings):
                return resolve_model(name, settings, allow_paths=paths_ok)
        try:
            found = await asyncio.to_thread(resolver, name, self.settings)
        except UserError as e:  # the registry's message names the model and what to do
            message = str(e) if name in str(e) else f"model '{name}' not found: {e}"
            raise NotFound(message, code="model_not_found", param="model") from None
        path, full_name = (found.path, found.name) if hasattr(found, "path") else (found, name)
        defaults = getattr(found, "defaults", None)
        variant = hashlib.sha256(json.dumps(defaults.to_json(), sort_keys=True).encode()).hexdigest()[:16] \
            if defaults else ""
        if not Path(path).exists():
            raise NotFound(f"model '{name}' not found: no file at {path}; pull it or give the path "
                           "of a GGUF file", code="model_not_found", param="model")
        return str(path), full_name, variant

    # -- leases ---------------------------------------------------------------------------

    async def acquire(self, name: str, ctx_size: int | None = None) -> Lease:
        """Wait until `name` is loaded (loading it, and making room, if needed). A
        `ctx_size` other than the loaded one's is a separate load, counted against
        max_loaded like any other."""
        t0 = time.perf_counter()
        waited_for_load = False
        key = full_name = None
        while True:
            slot = (self.find(name) if not ctx_size else None) if key is None else self._slots.get(key)
            if slot is None and key is None:
                path, full_name, variant = await self.resolve_named(name)
                key = self._key_for(path, variant, ctx_size or 0)
                continue
            if slot is not None and slot.state == READY:
                if not ctx_size and name != slot.name:
                    slot.aliases.add(name)
                slot.refs += 1
                self._cancel_timer(slot)
                return Lease(self, slot, time.perf_counter() - t0 if waited_for_load else 0.0)
            if slot is not None and slot.state == LOADING:
                waited_for_load = True
                await slot.ready.wait()
                if slot.error is not None:
                    raise self._load_error(name, slot.error)
                continue
            if slot is not None:  # unloading: wait for it to go, then load again
                await self._wait_for_change()
                continue
            if len(self._slots) >= self.max_loaded:
                victim = self._idle_victim()
                if victim is not None:
                    self._start_unload(victim)
                await self._wait_for_change()
                continue
            self._start_load(key, full_name or name, self.keep_alive_s, ctx_size or 0, path)
            waited_for_load = True

    def _release(self, slot: ModelSlot, keep_alive_s: float | None, given: bool) -> None:
        slot.refs -= 1
        slot.last_used = time.monotonic()
        if slot.refs == 0 and slot.state == READY:
            self._schedule_expiry(slot, keep_alive_s if given else slot.keep_alive_s)
        self._notify()

    async def preload(self, name: str) -> None:
        """Load `name` and keep it loaded until evicted or told otherwise."""
        lease = await self.acquire(name)
        lease.slot.keep_alive_s = FOREVER
        lease.release()

    async def unload(self, name: str) -> bool:
        """Unload `name` as soon as no request uses it; False if it is not loaded."""
        slot = self.find(name)
        if slot is None:
            try:
                path, _, variant = await self.resolve_named(name)
                slot = self._slots.get(self._key_for(path, variant, 0))
            except APIError:
                return False
        if slot is None:
            return False
        if slot.state == LOADING:
            await slot.ready.wait()
        if slot.state == READY:
            if slot.refs == 0:
                self._start_unload(slot)
            else:
                slot.keep_alive_s = 0.0
        return True

    # -- loading and unloading -----------------------------------------------------------

    def _key_for(self, path: str, variant: str, ctx_size: int) -> str:
        """The slot for `path` with a created model's settings (`variant`) at `ctx_size`:
        names for one file share a slot unless their settings differ; a loaded one
        already of the asked size serves it."""
        base = f"{path}#{variant}" if variant else path
        if ctx_size:
            for slot in self._slots.values():
                if slot.key.split("#ctx=")[0] == base and slot.state == READY and slot.model.n_ctx == ctx_size:
                    return slot.key
            return f"{base}#ctx={ctx_size}"
        return base

    def _start_load(self, key: str, name: str, keep_alive_s: float | None, ctx_size: int = 0,
                    path: str = "") -> ModelSlot:
        slot = ModelSlot(key=key, name=name, keep_alive_s=keep_alive_s, path=path or key, ctx_size=ctx_size)
        self._slots[key] = slot
        self._spawn(self._load(slot))
        return slot

    async def _load(self, slot: ModelSlot) -> None:
        loader = self._loader
        if loader is None:
            from localllm.runtime import load_model

            template, force = self.chat_template, self.force_load

            def loader(name, settings):
                return load_model(name, settings, chat_template=template, force=force)
        settings = self.settings
        if slot.ctx_size:
            settings = replace(settings, ctx_size=slot.ctx_size, ctx_size_asked=True)
        t0 = time.perf_counter()
        try:
            model = await asyncio.to_thread(loader, slot.name, settings)
        except BaseException as e:  # handed to every waiter
            slot.error = e
            self._slots.pop(slot.key, None)
            slot.ready.set()
            self._notify()
            if not isinstance(e, Exception):
                raise
            return
        slot.model = model
        slot.gate.capacity = model.parallel  # requests its engine decodes together
        slot.load_s = time.perf_counter() - t0
        slot.loaded_at = time.time()
        slot.state = READY
        slot.last_used = time.monotonic()
        if self._on_load is not None:
            self._on_load(slot.load_s)
        slot.ready.set()
        # Keep-alive counts from now if no waiter is left to take it (they all went away).
        asyncio.get_running_loop().call_soon(self._expire_if_unused, slot)
        self._notify()

    def _expire_if_unused(self, slot: ModelSlot) -> None:
        if slot.state == READY and slot.refs == 0 and slot.timer is None:
            self._schedule_expiry(slot, slot.keep_alive_s)

    def _load_error(self, name: str, error: BaseException) -> APIError:
        if isinstance(error, APIError):
            return error
        if isinstance(error, UserError):  # a file that is not a model, a context too large, ...
            return BadRequest(f"could not load model '{name}': {error}", code="model_load_failed", param="model")
        return APIError(f"could not load model '{name}': {error}", status=500, code="model_load_failed")

    def _idle_victim(self) -> ModelSlot | None:
        idle = [s for s in self._slots.values() if s.state == READY and s.refs == 0]
        return min(idle, key=lambda s: s.last_used) if idle else None

    def _start_unload(self, slot: ModelSlot) -> None:
        if slot.state != READY:
            return
        slot.state = UNLOADING
        self._cancel_timer(slot)
        slot.expires_at = time.time()
        self._spawn(self._unload(slot))

    async def _unload(self, slot: ModelSlot) -> None:
        try:
            await asyncio.to_thread(slot.model.close)
        except Exception as e:  # a model that fails to close is still gone for us
            print(f"localllm: warning: closing model {slot.name} failed: {e}", file=sys.stderr)
        finally:
            slot.model = None
            self._slots.pop(slot.key, None)
            self._notify()

    # -- keep-alive ----------------------------------------------------------------------

    def _schedule_expiry(self, slot: ModelSlot, keep_alive_s: float | None) -> None:
        self._cancel_timer(slot)
        if keep_alive_s is FOREVER:
            slot.expires_at = None
            return
        slot.expires_at = time.time() + keep_alive_s
        if keep_alive_s <= 0:
            self._start_unload(slot)
            return
        loop = asyncio.get_running_loop()
        slot.timer = loop.call_later(keep_alive_s, self._expire, slot)

    def _expire(self, slot: ModelSlot) -> None:
        slot.timer = None
        if slot.state == READY and slot.refs == 0:
            self._start_unload(slot)

    @staticmethod
    def _cancel_timer(slot: ModelSlot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.expires_at = None

    # -- plumbing ------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self) -> None:
        await self._changed.wait()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Unload everything (at shutdown, after requests have ended)."""
        for slot in list(self._slots.values()):
            if slot.state == LOADING:
                await slot.ready.wait()
        for slot in list(self._slots.values()):
            self._cancel_timer(slot)
            if slot.state == READY:
                slot.refs = 0
                self._start_unload(slot)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
