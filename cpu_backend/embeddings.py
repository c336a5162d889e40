"""Embeddings on llama.cpp: a second `llama_context` on the generation backend's model.

The context shares the model's weights (no second copy in memory) but has its own
compute buffers and threads, with `embeddings` on and the pooling the model declares;
the generation context and its KV cache are never touched, so the engine keeps
generating while this one embeds (llama.cpp contexts of one model may run on different
threads at once). Several inputs go through one `llama_decode`, one sequence id each;
llama.cpp pools per sequence. Encoder models (BERT) have no KV cache: `llama_decode`
runs them as an encoder, which needs a whole batch in one micro-batch, so the batch and
micro-batch sizes both equal the context.
"""

from __future__ import annotations

from typing import Sequence

import llama_cpp
import numpy as np

from localllm.backend.embedding import POOLING_NAMES, EmbeddingsUnsupported, refuse_without_pooling
from localllm.errors import ModelFileError

MAX_BATCH_INPUTS = 16


class LlamaCppEmbedder:
    """Pooled sentence embeddings from a loaded `LlamaCppBackend`'s model. Not thread-safe:
    callers take turns (`localllm.engine.embeddings.EmbeddingRunner` does)."""

    def __init__(self, backend, *, threads: int, ctx_size: int):
        info = backend.info
        # The backend owns the model; this context must be closed before the backend is.
        self._model = backend._model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        n_ctx = min(ctx_size, info.context_length) if info.context_length else ctx_size
        cparams = llama_cpp.llama_context_default_params()
        cparams.embeddings = True
        cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED  # the model's own
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_seq_max = MAX_BATCH_INPUTS
        cparams.kv_unified = True  # any one input may use the whole context
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelFileError(f"{info.path}: cannot create an embedding context of {n_ctx} tokens: "
                                 "try a smaller --ctx-size")
        self.pooling = POOLING_NAMES.get(llama_cpp.llama_pooling_type(self._ctx), "none")
        try:
            refuse_without_pooling(info.name or info.path, self.pooling, info.architecture)
        except EmbeddingsUnsupported:
            self.close()
            raise
        self.max_tokens = self.max_batch_tokens = llama_cpp.llama_n_batch(self._ctx)
        self.max_batch_inputs = MAX_BATCH_INPUTS
        self.dimensions = llama_cpp.llama_model_n_embd_out(self._model) or llama_cpp.llama_model_n_embd(self._model)
        self._memory = llama_cpp.llama_get_memory(self._ctx)  # None for encoders (no KV cache)
        self._batch = llama_cpp.llama_batch_init(self.max_batch_tokens, 0, 1)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        for _ in range(2):
            buf = (llama_cpp.llama_token * cap)()
            # add_special: BOS, or [CLS] ... [SEP], as the vocabulary says; parse_special off.
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, True, False)
            if n >= 0:
                return list(buf[:n])
            cap = -n
        raise RuntimeError("llama_tokenize kept asking for a larger buffer")

    def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        total = sum(len(tokens) for tokens in inputs)
        if total > self.max_batch_tokens or len(inputs) > self.max_batch_inputs:
            raise ValueError(f"{len(inputs)} inputs of {total} tokens do not fit one batch")
        batch = self._batch
        i = 0
        for seq, tokens in enumerate(inputs):
            for pos, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = 1  # every position is an output: pooling reads them all
                i += 1
        batch.n_tokens = i
        if self._memory:
            llama_cpp.llama_memory_clear(self._memory, True)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} while embedding")
        out = np.empty((len(inputs), self.dimensions), dtype=np.float32)
        for seq in range(len(inputs)):
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no pooled embedding for input {seq}")
            out[seq] = np.ctypeslib.as_array(ptr, shape=(self.dimensions,))
        return out

    def close(self) -> None:
        if self._ctx:
            if getattr(self, "_batch", None) is not None:
                llama_cpp.llama_batch_free(self._batch)
                self._batch = None
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
