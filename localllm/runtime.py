"""A loaded model ready for frontends: resolve a name, load the backend, start the
engine, and turn chats or raw prompts into generation requests.

Frontends (CLI, chat app, server) use `load_model` and `LoadedModel`; they never touch a
backend library.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from localllm.config import Settings
from localllm.registry.modelfile import ModelDefaults
from localllm.engine import Engine, RequestHandle
from localllm.errors import UserError
from localllm.kvcache.overflow import check_context
from localllm.tokenizer.chat import ChatPrompter
from localllm.tokenizer.protocol import Tokenizer
from localllm.types import DraftParams, GenerationRequest, Message, ModelInfo, OutputConstraint, SamplingParams


@dataclass
class LoadedModel:
    name: str
    path: Path
    engine: Engine
    prompter: ChatPrompter
    load_s: float
    overflow: str = "refuse"
    settings: Settings | None = None  # threads and context size for the embedding context
    _embeddings: object = field(default=None, repr=False)  # EmbeddingRunner, opened on first use
    _embeddings_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Threads using the model outside its engine (preparing a prompt): `close` waits for them.
    _users: int = field(default=0, repr=False)
    _users_changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    # A created model's own parameters, system prompt and opening messages (empty for
    # others): frontends apply them under whatever the request gives itself.
    defaults: ModelDefaults = field(default_factory=ModelDefaults)

    @property
    def info(self) -> ModelInfo:
        return self.engine.backend.info

    @property
    def parallel(self) -> int:
        """Requests its engine decodes together; more wait in its queue."""
        return self.engine.parallel

    @property
    def n_ctx(self) -> int:
        return self.engine.backend.n_ctx

    @property
    def backend_name(self) -> str:
        return self.engine.backend.name

    @property
    def vocab_size(self) -> int:
        return self.engine.backend.vocab_size

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's own vocabulary (`localllm.tokenizer.Tokenizer`); any thread may use it."""
        return self.engine.backend.vocabulary

    def memory(self):
        """Bytes the loaded model holds (weights, KV cache)."""
        return self.engine.backend.memory()

    @property
    def cache_stats(self):
        """The KV-cache manager's counters (`localllm.kvcache.CacheStats`): hits, hit
        rate, reused tokens, bytes held. Updated between requests."""
        return self.engine.caches.stats

    def chat_tokens(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                    tools: Sequence[dict] | None = None) -> list[int]:
        """`tools`: OpenAI tool objects for a chat template that renders them."""
        extra = {"tools": list(tools)} if tools else {}
        with self.in_use():  # whatever thread asks, the model stays open until it is done
            return self.prompter.encode(messages, add_generation_prompt=add_generation_prompt, **extra)

    def text_tokens(self, prompt: str, special: bool = False) -> list[int]:
        """A prompt continued as written. `special=True` is for prompts a client
        formatted itself (raw mode): "<|im_start|>" there is the control token, as in
        llama.cpp with special-token parsing on; otherwise it stays plain text."""
        vocab = self.tokenizer
        if not prompt:
            return [vocab.bos_id] if vocab.bos_id is not None else []
        with self.in_use():
            tokens = vocab.encode(prompt, add_bos=True, special=special)
        if special and len(tokens) > 1 and tokens[0] == tokens[1] == vocab.bos_id and vocab.add_bos:
            del tokens[0]  # the prompt spells out BOS itself: one is enough
        return tokens

    def request(
        self,
        tokens: Sequence[int],
        sampling: SamplingParams = SamplingParams(),
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        dropped_messages: int = 0,
        draft: DraftParams | None = None,
    ) -> GenerationRequest:
        """A request for `tokens`; `max_tokens=None` means until EOS or a full context;
        `draft=None` drafts as the settings say (`--draft`, default auto)."""
        return GenerationRequest(
            tuple(tokens), sampling,
            max_tokens=max_tokens if max_tokens and max_tokens > 0 else None,
            stop=tuple(stop),
            stop_token_ids=self.prompter.stop_token_ids,
            dropped_messages=dropped_messages,
            draft=draft or self.draft_defaults,
        )

    @property
    def draft_defaults(self) -> DraftParams:
        return self.settings.draft_params if self.settings is not None else DraftParams()

    def check_context(self, n_prompt: int, max_tokens: int | None = None) -> None:
        """Raise ContextOverflowError (fields: prompt_tokens, limit, reserve) unless a
        prompt of `n_prompt` tokens and `max_tokens` more (None: one) fit the context."""
        check_context(n_prompt, self.n_ctx, max_tokens or 1)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """The front door: every frontend starts its generations here. An empty prompt is
        a UserError; one that does not fit the context with its `max_tokens` is a
        ContextOverflowError; then the engine queues it."""
        if not request.prompt_tokens:
            raise UserError("the prompt is empty: give some text to continue")
        self.check_context(len(request.prompt_tokens), request.max_tokens)
        return self.engine.submit(request)

    def fit_chat(self, messages: Sequence[Message], max_tokens: int | None = None,
                 policy: str | None = None, tools: Sequence[dict] | None = None) -> tuple[list[int], int]:
        """Prompt tokens for a chat under the overflow policy (the model's, or `policy`):
        (tokens, messages dropped). Room for the reply is kept: `max_tokens`, or an
        eighth of the context."""
        from localllm.kvcache import OverflowPolicy, fit_messages

        reserve = max_tokens if max_tokens and max_tokens > 0 else max(1, self.n_ctx // 8)
        tokens, _, dropped = fit_messages(
            messages, (lambda m: self.chat_tokens(m, tools=tools)) if tools else self.chat_tokens, self.n_ctx,
            min(reserve, self.n_ctx - 1), OverflowPolicy(policy or self.overflow)
        )
        return tokens, dropped

    def chat(self, messages: Sequence[Message], sampling: SamplingParams = SamplingParams(),
             max_tokens: int | None = None, stop: Sequence[str] = (),
             constraint: OutputConstraint | None = None, draft: DraftParams | None = None) -> RequestHandle:
        """Generate the assistant's reply (inside `constraint` when given). If the
        overflow policy dropped old turns, `handle.request.dropped_messages` says how many."""
        tokens, dropped = self.fit_chat(messages, max_tokens)
        request = self.request(tokens, sampling, max_tokens, stop, dropped, draft)
        return self.submit(dataclasses.replace(request, constraint=constraint))

    def complete(self, prompt: str, sampling: SamplingParams = SamplingParams(),
                 max_tokens: int | None = None, stop: Sequence[str] = (), special: bool = False,
                 constraint: OutputConstraint | None = None, draft: DraftParams | None = None) -> RequestHandle:
        request = self.request(self.text_tokens(prompt, special), sampling, max_tokens, stop, draft=draft)
        return self.submit(dataclasses.replace(request, constraint=constraint))

    def check_constraint(self, constraint: OutputConstraint) -> None:
        """A UserError when `constraint` cannot be enforced with this model's vocabulary."""
        from localllm.engine.constraint import compiler_for

        compiler_for(self.tokenizer).check(constraint)

    def embeddings(self):
        """The model's `EmbeddingRunner` (`localllm.engine.embeddings`): an embedding
        context of its own, opened on first use, used from any thread while the engine
        generates. Raises `EmbeddingsUnsupported` for a model without pooling."""
        with self._embeddings_lock:
            if self._embeddings is None:
                from localllm.backend.embedding import open_embedder
                from localllm.engine.embeddings import EmbeddingRunner

                settings = self.settings or Settings()
                embedder = open_embedder(self.engine.backend, self.name, threads=settings.resolved_threads,
                                         ctx_size=settings.ctx_size)
                self._embeddings = EmbeddingRunner(embedder)
            return self._embeddings

    @contextmanager
    def in_use(self):
        """Hold the model open while a thread uses its vocabulary or template: `close`
        waits until every holder has left, so nothing frees the model under it."""
        with self._users_changed:
            self._users += 1
        try:
            yield self
        finally:
            with self._users_changed:
                self._users -= 1
                self._users_changed.notify_all()

    def close(self) -> None:
        with self._users_changed:
            while self._users:
                self._users_changed.wait()
        with self._embeddings_lock:
            if self._embeddings is not None:  # its context uses the backend's model: first
                self._embeddings.close()
                self._embeddings = None
        self.engine.close()
        gc.unfreeze()  # this model's objects (and their cycles) are collectable again


def settle_heap() -> None:
    """Collect once, then move every object alive now (modules, the loaded model's
    vocabulary and templates) out of the collector's reach (`gc.freeze`). A full
    collection walks every tracked object with the GIL held, stalling the engine thread
    mid-stream: ~18 ms for the server's 66,000 objects at startup on the 2-core VM, which
    lands in the slowest inter-token gaps. Unloading a model unfreezes them again."""
    gc.collect()
    gc.freeze()


def load_model(name: str, settings: Settings, *, chat_template: str | None = None, force: bool = False) -> LoadedModel:
    """Resolve `name` (registry name or path), load it and start its engine.
    `chat_template` overrides the model's own template (text of a Jinja template);
    `force` loads even when the memory preflight says it will not fit."""
    from dataclasses import replace

    from localllm.backend.select import load_backend
    from localllm.registry import resolve_model

    resolved = resolve_model(name, settings)
    path, defaults = resolved.path, resolved.defaults
    if defaults.num_ctx and not settings.ctx_size_asked:  # a created model's num_ctx, unless one is asked
        settings = replace(settings, ctx_size=defaults.num_ctx, ctx_size_asked=True)
    t0 = time.perf_counter()
    backend = load_backend(str(path), settings, force=force)
    try:
        template = chat_template if chat_template is not None else (defaults.template or backend.info.chat_template)
        prompter = ChatPrompter(backend.vocabulary, template, model_name=name)
        engine = Engine(backend, make_cache_manager(backend, path, settings), parallel=settings.resolved_parallel)
    except BaseException:
        backend.close()
        raise
    settle_heap()
    return LoadedModel(name=name, path=path, engine=engine, prompter=prompter,
                       load_s=time.perf_counter() - t0, overflow=settings.overflow, settings=settings,
                       defaults=defaults)


def make_cache_manager(backend, model_path: Path, settings: Settings):
    """The KV-cache manager the settings ask for, with disk snapshots when enabled."""
    from localllm.kvcache import KVCacheManager, SnapshotStore
    from localllm.kvcache.snapshots import snapshot_key

    snapshots = None
    if settings.prefix_cache and settings.snapshot_cap_mb > 0:
        try:
            key = snapshot_key(model_path, settings.kv_type, backend.name)
            snapshots = SnapshotStore(settings.snapshots_dir, key, cap_bytes=settings.snapshot_cap_mb << 20)
        except OSError:
            snapshots = None  # an unwritable cache folder costs speed, not correctness
    return KVCacheManager(backend, snapshots=snapshots, enabled=settings.prefix_cache)
