"""llama.cpp backend over llama-cpp-python's low-level API.

One `llama_context` per loaded model; each `LlamaCppCache` is one sequence id of it.
With one request at a time (`--parallel 1`) the sequences share one KV buffer, so the
KV-cache manager's copies of a prefix share its cells. With several decoding together each
live cache has a KV stream of its own (`kv_unified` off), see `LlamaCppBackend`: a
sequence computes in a batch what it computes alone. Weights are memory-mapped. The hot
path (`forward` for one token) fills a preallocated batch through numpy views and returns
a zero-copy view of llama.cpp's logits. The vocabulary is `LlamaCppVocabulary` over the
same loaded model.

Sliding-window models (Gemma 3 and others): the live cache keeps every position of the
sliding layers too (`swa_full`), so the working cache can be cut back anywhere. A saved
state holds only the last window of those layers (llama.cpp writes no more), so a cache
loaded from one can be cut back only to where that window still covers what the next
position attends to; `cache_capability` reports it, read from llama.cpp's own count of
the oldest position held (`llama_memory_seq_pos_min`). Recurrent and hybrid models hold a
state that cannot be cut back at all.
"""

from __future__ import annotations

import ctypes
import sys
import weakref
from pathlib import Path
from typing import Sequence

import llama_cpp
import numpy as np

from . import llama_log
from .attention_calibration import choose_flash_attn
from .thread_policy import FreeCoreThreads
from .vocab import LlamaCppVocabulary
from localllm.backend.protocol import (BatchItem, CacheCapability, HostLogits, MemoryReport, copy_through_state,
                                       forward_each, window_min_tokens)
from localllm.types import ModelInfo
from localllm.errors import ContextOverflowError, ModelFileError

KV_GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}
KV_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}
# Sequence ids of a shared-buffer context: the caches decoding together, the idle
# working cache the next turn extends, and one spare for the KV-cache manager's copies.
MIN_SEQUENCES = 8
# A build with llama.cpp's AMX kernels (compiled in by -march=native on a CPU that has
# AMX) crashed with a segfault on every batch of 2 or more tokens of a quantized model
# (SmolLM2 Q4_1, a Q4_K_M llama) on the 2-core Xeon VM this project is built on, whatever
# the thread count. AMX weights live in an "extra" buffer type, so such builds load
# weights into plain CPU buffers (which also gives up the CPU repack of Q4_0/Q4_K).
AMX_BUILD = b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


class LlamaCppCache:
    """One sequence of the context's KV buffer: the tokens it holds, in position order."""

    def __init__(self, backend: "LlamaCppBackend", seq_id: int):
        self._backend = backend
        self.seq_id = seq_id
        self.tokens: list[int] = []
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self._backend._release(self)
            self.closed = True

    def __del__(self):  # a forgotten cache must not leak its sequence id
        try:
            if not self.closed:
                # Whatever thread collects it: only free the id, move no other stream.
                self._backend._release(self, compact=False)
                self.closed = True
        except Exception:
            pass


ALL_LAYERS = 1 << 30  # llama.cpp caps n_gpu_layers at the model's layer count (+ output)


def offloaded_layers(requested: int) -> int:
    """What to ask llama.cpp for: 0 where the build cannot offload (CPU-only wheels),
    else `requested` with -1 meaning every layer (Metal on Apple Silicon)."""
    if requested == 0 or not llama_cpp.llama_supports_gpu_offload():
        return 0
    return ALL_LAYERS if requested < 0 else requested


class LlamaCppBackend:
    """A GGUF model loaded by llama.cpp on the CPU."""

    name = "llamacpp"
    decodes_ahead = False  # llama_decode returns with the logits computed

    def __init__(
        self,
        info: ModelInfo,
        *,
        ctx_size: int = 4096,
        threads: int = 1,
        adapt_threads: bool = False,
        kv_type: str = "f16",
        kv_pool: int = 1,
        n_batch: int = 512,
        flash_attn: str = "off",
        calibration_dir: Path | None = None,
        verbose: bool = False,
        gpu_layers: int = 0,
    ):
        self.info = info
        self.kv_type = kv_type
        self._log = llama_log.install(verbose)
        path = info.path.encode()

        mparams = llama_cpp.llama_model_default_params()
        self.gpu_layers = offloaded_layers(gpu_layers)
        mparams.n_gpu_layers = self.gpu_layers
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if llama_cpp.llama_supports_mmap() else 0
        mparams.use_extra_bufts = not AMX_BUILD
        self._model = llama_cpp.llama_model_load_from_file(path, mparams)
        if not self._model:
            detail = self._log.last_error() or "llama.cpp could not load it"
            raise ModelFileError(f"{info.path}: cannot load model ({detail}): the file may be corrupted or too new")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

        cparams = llama_cpp.llama_context_default_params()
        # The KV memory holds `kv_pool` full contexts; each sequence is limited to
        # `ctx_size` by `forward`.
        cparams.n_ctx = ctx_size * max(1, kv_pool)
        # One micro-batch per llama_decode call, 512 tokens as llama-server's default
        # ubatch. Measured (prefill of 1,500 / 1,000 cached tokens, 2 threads, 4-5 interleaved
        # rounds): SmolLM2-135M Q4_1 lost 6% with 128, 3% with 256 or 1,024; the 1.1B Q4_K_M
        # was level with 256 (159 tok/s both), 4% slower with 384; llama-server's n_batch
        # 2,048 over 512-token ubatches matched ours. Nothing to calibrate per model here.
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        # Several sequences decoding together (--parallel > 1) get a KV stream each, as
        # llama-server's slots do: a sequence's attention reads its own cells only, laid
        # out as when it runs alone (cell i holds position i), not every sequence's cells
        # of one shared buffer, where which cells hold a sequence changes how llama.cpp's
        # dot products round. Measured with benchmarks/bench_kv_streams.py (SmolLM2-135M
        # Q4_1, 2 threads), 4 sequences decoding together at 100 / 400 / 1,500 cached
        # tokens each: streams 137 / 126 / 80 tok/s with flash attention off, 136 / 88 /
        # 36 with it on, one buffer 129 / 85 / 33 (on, as it was forced for several
        # sequences); with streams and flash attention off a batched sequence's logits
        # were bit-identical to alone at every depth. So streams leave flash attention to
        # the calibration, as one sequence does (attention_calibration.choose_flash_attn).
        # Sliding-window and recurrent models keep the shared buffer (not measured).
        recurrent = llama_cpp.llama_model_is_recurrent(self._model) or llama_cpp.llama_model_is_hybrid(self._model)
        self.streams = kv_pool > 1 and not recurrent and llama_cpp.llama_model_n_swa(self._model) <= 0
        # Streams split the context evenly, one per sequence that may be live at once:
        # the KV-cache manager keeps no more live caches than requests run together
        # (the others it keeps are saved states in host memory), see `new_cache`.
        self.n_sequences = kv_pool if self.streams else max(MIN_SEQUENCES, kv_pool + 2)
        cparams.n_seq_max = self.n_sequences
        cparams.kv_unified = not self.streams
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.type_k = cparams.type_v = KV_GGML_TYPES[kv_type]
        # Flash attention helps some models on some machines and hurts others (see
        # attention_calibration): "auto" measures both once per model file and machine.
        choice = choose_flash_attn(self._model, model_path=info.path, mode=flash_attn, kv_type=kv_type,
                                   n_ctx=ctx_size, threads=threads, cache_dir=calibration_dir,
                                   sequences=1 if self.streams else max(1, kv_pool))
        self.flash_attn = choice.flash_attn
        self.attention_note = choice.reason
        if verbose:
            print(f"localllm: {choice.reason}", file=sys.stderr)
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.no_perf = True
        # Sliding-window layers keep all positions, as full-attention layers do (the
        # memory the preflight counts): a cut-back cache then still holds the window
        # before the cut. Without it llama.cpp drops keys that left the window.
        cparams.swa_full = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            detail = self._log.last_error() or "out of memory?"
            hint = "use --kv-type f16" if "cache type" in detail else "try a smaller --ctx-size"
            raise ModelFileError(f"{info.path}: cannot create a context of {ctx_size} tokens ({detail}): {hint}")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        # --threads left to us: follow the cores other processes leave free (thread_policy).
        self.threads = threads
        self._free_cores = FreeCoreThreads(threads) if adapt_threads else None
        self._verbose = verbose

        # llama.cpp pads the context (and caps the batch to it); the limit is what was asked.
        self.kv_cells = llama_cpp.llama_n_ctx(self._ctx)
        self.n_ctx = min(ctx_size, self.kv_cells // (self.n_sequences if self.streams else 1))
        self.n_batch = n_batch = min(n_batch, llama_cpp.llama_n_batch(self._ctx))
        self.max_batch_tokens = n_batch
        self.vocabulary = LlamaCppVocabulary(self._model, info.metadata)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(self._vocab)
        # A recurrent state (Mamba, RWKV; hybrids hold one too) cannot be cut back.
        self._trimmable = not (llama_cpp.llama_model_is_recurrent(self._model) or llama_cpp.llama_model_is_hybrid(self._model))
        self.sliding_window = max(0, llama_cpp.llama_model_n_swa(self._model))

        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._b_token = np.ctypeslib.as_array(self._batch.token, shape=(n_batch,))
        self._b_pos = np.ctypeslib.as_array(self._batch.pos, shape=(n_batch,))
        self._b_nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n_batch,))
        self._b_logits = np.ctypeslib.as_array(self._batch.logits, shape=(n_batch,))
        self._b_nseq[:] = 1
        self._b_seq_written = [-1] * n_batch  # which seq id each slot's seq_id[i][0] holds
        self._free_seqs = set(range(self.n_sequences))
        self._live: weakref.WeakValueDictionary[int, LlamaCppCache] = weakref.WeakValueDictionary()

    # -- caches ------------------------------------------------------------------------

    def new_cache(self) -> LlamaCppCache:
        if not self._free_seqs:
            what = "KV streams (one per request decoding together, --parallel)" if self.streams else "KV sequences"
            raise RuntimeError(f"all {self.n_sequences} {what} of this context are in use")
        seq = min(self._free_seqs)  # streams: keep the live ones at the lowest ids (see _release)
        self._free_seqs.remove(seq)
        cache = self._live[seq] = LlamaCppCache(self, seq)
        return cache

    def _release(self, cache: LlamaCppCache, compact: bool = True) -> None:
        if self._ctx:
            llama_cpp.llama_memory_seq_rm(self._mem, cache.seq_id, -1, -1)
            self._live.pop(cache.seq_id, None)
            free = cache.seq_id
            if self.streams and compact:
                free = self._fill_gap(free)
            self._free_seqs.add(free)
        cache.tokens = []

    def _fill_gap(self, seq: int) -> int:
        """Moves the live cache with the highest sequence id into the freed `seq` when it
        is above it, and returns the id left free. llama.cpp puts sequences of separate
        streams into one micro-batch only when their ids are consecutive: with a gap,
        every step would compute the model twice. The move copies the cache's cells
        through its saved state (milliseconds), synchronously, unlike llama.cpp's
        cross-stream `seq_cp`, which copies at the next decode."""
        top = max(self._live.keys(), default=-1)
        if top <= seq:
            return seq
        mover = self._live[top]
        data = self.save_state(mover)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if data and llama_cpp.llama_state_seq_set_data(self._ctx, buf, len(data), seq) == 0:
            llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
            return seq  # not moved: the gap only costs speed
        llama_cpp.llama_memory_seq_rm(self._mem, top, -1, -1)
        del self._live[top]
        mover.seq_id = seq
        self._live[seq] = mover
        return top

    def trim(self, cache: LlamaCppCache, n_tokens: int) -> None:
        if n_tokens >= len(cache.tokens):
            return
        if not self.cache_capability(cache).allows(n_tokens):
            raise ValueError(self._refusal(cache, n_tokens))
        if not llama_cpp.llama_memory_seq_rm(self._mem, cache.seq_id, n_tokens, -1):
            raise RuntimeError(f"llama.cpp could not cut a cache back to {n_tokens} tokens")
        del cache.tokens[n_tokens:]

    def cache_capability(self, cache: LlamaCppCache) -> CacheCapability:
        n = len(cache.tokens)
        if not self._trimmable:
            return CacheCapability(trimmable=False, min_tokens=n, restored_min_tokens=n)
        if not self.sliding_window or n == 0:
            return CacheCapability(trimmable=True)
        w = self.sliding_window
        # For a sliding-window model llama.cpp answers for its sliding layers (the global
        # ones hold every position). What it holds is one run of positions up to the end.
        oldest = llama_cpp.llama_memory_seq_pos_min(self._mem, cache.seq_id)
        # A saved state holds the sliding layers' last window only: positions n-W .. n-1.
        return CacheCapability(
            trimmable=True,
            min_tokens=min(n, window_min_tokens(oldest, w)),
            restored_min_tokens=min(n, window_min_tokens(max(oldest, n - w), w)),
        )

    def _refusal(self, cache: LlamaCppCache, n_tokens: int) -> str:
        n = len(cache.tokens)
        if not self._trimmable:
            return f"a recurrent model's cache cannot be cut back (from {n} to {n_tokens} tokens); start it empty"
        least = self.cache_capability(cache).min_tokens
        return (f"this cache's sliding-window layers no longer hold the keys before token {least}: "
                f"it cannot be cut back from {n} to {n_tokens} tokens (only to {least} or more, or to 0)")

    def cache_bytes(self, cache: LlamaCppCache) -> int:
        return len(cache.tokens) * self.kv_bytes_per_token

    def copy_prefix(self, source: LlamaCppCache, cache: LlamaCppCache, n_tokens: int) -> None:
        """`cache` shares `source`'s first `n_tokens` cells in the one KV buffer (llama.cpp
        adds the sequence id to those cells: no keys are copied, none serialized); either
        sequence writes its later positions to cells of its own. Between streams the
        cells are copied, as bytes."""
        if not self._trimmable or self.streams:  # a recurrent state is one cell per sequence
            copy_through_state(self, source, cache, n_tokens)
            return
        if n_tokens > len(source.tokens) or not self.cache_capability(source).allows(n_tokens):
            raise ValueError(f"cannot copy the first {n_tokens} of a cache holding {len(source.tokens)} tokens")
        llama_cpp.llama_memory_seq_rm(self._mem, cache.seq_id, -1, -1)
        cache.tokens = []
        if n_tokens:
            llama_cpp.llama_memory_seq_cp(self._mem, source.seq_id, cache.seq_id, 0, n_tokens)
            cache.tokens = source.tokens[:n_tokens]

    def save_state(self, cache: LlamaCppCache) -> bytes:
        """The cache's keys and values as bytes (for disk snapshots)."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, cache.seq_id)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(self._ctx, buf, size, cache.seq_id)
        return bytes(memoryview(buf)[:n])

    def load_state(self, cache: LlamaCppCache, tokens: Sequence[int], data: bytes) -> bool:
        """Replace the cache's contents with `save_state` bytes; False if llama.cpp refuses them."""
        self.trim(cache, 0)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(self._ctx, buf, len(data), cache.seq_id) == 0:
            llama_cpp.llama_memory_seq_rm(self._mem, cache.seq_id, -1, -1)
            return False
        # The state must end where `tokens` end (a state saved for other tokens would
        # be computed on wrong keys).
        if llama_cpp.llama_memory_seq_pos_max(self._mem, cache.seq_id) != len(tokens) - 1:
            llama_cpp.llama_memory_seq_rm(self._mem, cache.seq_id, -1, -1)
            return False
        cache.tokens = list(tokens)
        return True

    @property
    def kv_bytes_per_token(self) -> int:
        return self.memory().kv_cache_bytes // max(1, self.kv_cells)

    # -- compute -----------------------------------------------------------------------

    def _follow_free_cores(self) -> None:
        threads = self._free_cores.poll() if self._free_cores is not None else None
        if threads is not None:
            llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
            self.threads = threads
            if self._verbose:
                print(f"localllm: {threads} thread{'s' if threads > 1 else ''} "
                      f"(other processes leave {threads} of {self._free_cores.max_threads} cores free)", file=sys.stderr)

    def forward(self, tokens: Sequence[int], cache: LlamaCppCache, all_logits: bool = False) -> HostLogits:
        self._follow_free_cores()
        n_total = len(tokens)
        start = len(cache.tokens)
        if start + n_total > self.n_ctx:
            raise ContextOverflowError(start + n_total, self.n_ctx, 0)
        rows = []
        for lo, hi in _passes(n_total, self.n_batch):
            chunk = tokens[lo:hi]
            n = len(chunk)
            last_chunk = lo + n == n_total
            self._fill_batch(chunk, start + lo, cache.seq_id, all_logits, last_chunk)
            rc = llama_cpp.llama_decode(self._ctx, self._batch)
            if rc != 0:
                # Nothing of a failed batch is kept: cut the sequence back to what we know.
                llama_cpp.llama_memory_seq_rm(self._mem, cache.seq_id, start + lo, -1)
                if rc == 1:
                    raise ContextOverflowError(start + n_total, self.n_ctx, 0, "llama.cpp found no room left in its KV cache: raise --ctx-size")
                raise RuntimeError(f"llama_decode failed with code {rc}")
            cache.tokens.extend(chunk)
            if all_logits:
                ptr = llama_cpp.llama_get_logits(self._ctx)
                view = np.ctypeslib.as_array(ptr, shape=(n, self.vocab_size))
                rows.append(view if n_total == n else view.copy())
        if all_logits:
            return HostLogits(rows[0] if len(rows) == 1 else np.concatenate(rows))
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return HostLogits(np.ctypeslib.as_array(ptr, shape=(1, self.vocab_size)))

    def forward_batch(self, items: Sequence[BatchItem]) -> list[HostLogits]:
        """All items in one llama_decode (each cache is one sequence id); the logits rows
        stay in llama.cpp's output buffer, one view per item. With streams and flash
        attention off, items of several tokens (prompt chunks, drafts) get passes of
        their own after the one-token items, as many tokens of each in a pass, see below."""
        self._follow_free_cores()
        total = sum(len(item.tokens) for item in items)
        if total > self.n_batch or len(items) == 1:
            return forward_each(self, items) if len(items) > 1 else [self.forward(items[0].tokens, items[0].cache, items[0].all_logits)]
        for item in items:
            if len(item.cache.tokens) + len(item.tokens) > self.n_ctx:
                raise ContextOverflowError(f"{len(item.cache.tokens) + len(item.tokens)} tokens do not fit the "
                                           f"context of {self.n_ctx}: use a larger --ctx-size")
        by_seq = sorted(range(len(items)), key=lambda k: items[k].cache.seq_id)
        if not self.streams or self.flash_attn:
            # One pass. With streams llama.cpp puts them in one micro-batch only in
            # ascending, consecutive sequence order (the output rows follow the batch's).
            passes = [[(k, 0, len(items[k].tokens)) for k in (by_seq if self.streams else range(len(items)))]]
        else:
            # ... and with as many tokens of each: a prompt chunk or draft beside one-token
            # items would have its first token computed in the micro-batch shared with
            # them and the rest in another. Without flash attention that token then rounds
            # differently from the same pass alone (llama.cpp's attention takes another
            # kernel for one token of a sequence than for several). So the one-token items
            # make one pass, and the others passes where each has the same number of
            # tokens, never leaving one token for later (`equal_passes`): a sequence fed
            # in slices of two or more tokens computes what one pass of them computes.
            # Flash attention computes each query row alone (below its split-KV depth),
            # so there the split changes nothing.
            singles = [(k, 0, 1) for k in by_seq if len(items[k].tokens) == 1]
            passes = ([singles] if singles else []) + equal_passes(
                [(k, len(items[k].tokens)) for k in by_seq if len(items[k].tokens) > 1])
        out: list[list[np.ndarray]] = [[] for _ in items]
        for segments in passes:
            rows = self._decode_together(items, segments)
            for (k, _, _), view in zip(segments, rows):  # a later pass overwrites llama.cpp's output buffer
                out[k].append(view if len(passes) == 1 else view.copy())
        for cache, tokens, _ in items:
            cache.tokens.extend(tokens)
        return [HostLogits(rows[0] if len(rows) == 1 else np.concatenate(rows)) for rows in out]

    def _decode_together(self, items: Sequence[BatchItem], segments: Sequence[tuple[int, int, int]]) -> list[np.ndarray]:
        """One llama_decode of `items[k].tokens[lo:hi]` for each (k, lo, hi) of
        `segments`, in that order (an item's earlier slices fed by earlier passes); the
        rows of llama.cpp's output buffer each segment asked for: every position for an
        item that wants all logits, else the last position of an item's last slice. The
        caches' token lists are left to the caller; on a failure no item keeps anything
        past them. Every pass ends at least one item (`equal_passes` takes the shortest
        remainder whole), so it always has a row to return."""
        batch, written = self._batch, self._b_seq_written
        rows_of: list[tuple[int, int]] = []
        i = n_out = 0
        for k, lo, hi in segments:
            cache, tokens, all_logits = items[k]
            n, pos0, seq = hi - lo, len(cache.tokens) + lo, cache.seq_id
            self._b_token[i:i + n] = tokens[lo:hi]
            self._b_pos[i:i + n] = np.arange(pos0, pos0 + n, dtype=np.int32)
            self._b_logits[i:i + n] = 1 if all_logits else 0
            if hi == len(tokens):
                self._b_logits[i + n - 1] = 1
            for j in range(i, i + n):
                if written[j] != seq:
                    batch.seq_id[j][0] = seq
                    written[j] = seq
            rows = n if all_logits else int(hi == len(tokens))
            rows_of.append((n_out, rows))
            n_out += rows
            i += n
        batch.n_tokens = i
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            for cache, _, _ in items:  # keep nothing of a failed batch (nor of passes before it)
                llama_cpp.llama_memory_seq_rm(self._mem, cache.seq_id, len(cache.tokens), -1)
            if rc == 1:
                raise ContextOverflowError(f"no room left in the KV cache ({self.kv_cells} cells for "
                                           f"{len(items)} sequences): use a larger --ctx-size or a smaller --parallel")
            raise RuntimeError(f"llama_decode failed with code {rc}")
        out = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx), shape=(n_out, self.vocab_size))
        return [out[lo:lo + rows] for lo, rows in rows_of]

    def _fill_batch(self, chunk: Sequence[int], pos0: int, seq_id: int, all_logits: bool, last_chunk: bool) -> None:
        n = len(chunk)
        batch = self._batch
        batch.n_tokens = n
        if n == 1:
            self._b_token[0] = chunk[0]
            self._b_pos[0] = pos0
        else:
            self._b_token[:n] = chunk
            self._b_pos[:n] = np.arange(pos0, pos0 + n, dtype=np.int32)
        written = self._b_seq_written
        for i in range(n):
            if written[i] != seq_id:
                batch.seq_id[i][0] = seq_id
                written[i] = seq_id
        if all_logits:
            self._b_logits[:n] = 1
        else:
            self._b_logits[:n] = 0
            if last_chunk:
                self._b_logits[n - 1] = 1

    # -- resources ---------------------------------------------------------------------

    def memory(self) -> MemoryReport:
        weights = int(llama_cpp.llama_model_size(self._model))
        meta = self.info.metadata
        arch = self.info.architecture
        n_layer = int(meta.get(f"{arch}.block_count", 0))
        n_head = int(meta.get(f"{arch}.attention.head_count", 1) or 1)
        n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
        n_embd = int(meta.get(f"{arch}.embedding_length", 0))
        k_len = int(meta.get(f"{arch}.attention.key_length", n_embd // n_head))
        v_len = int(meta.get(f"{arch}.attention.value_length", n_embd // n_head))
        kv = int(self.kv_cells * n_layer * n_head_kv * (k_len + v_len) * KV_BYTES_PER_VALUE[self.kv_type])
        return MemoryReport(weights_bytes=weights, kv_cache_bytes=kv)

    def close(self) -> None:
        if self._ctx:
            self.vocabulary.close()
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._ctx = None
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _passes(n_total: int, n_batch: int) -> list[tuple[int, int]]:
    """[lo, hi) of each llama_decode a prompt of `n_total` tokens is fed in: batches of
    `n_batch`, except that a last pass of one token takes one from the pass before it.
    Without flash attention llama.cpp computes a lone token by other kernels than several
    (see kvcache.manager.FED_AT_LEAST): the prompt's last token then rounds as it does when
    the prompt arrives whole or cached."""
    bounds = list(range(0, n_total, n_batch)) + [n_total]
    if n_batch > 1 and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    return list(zip(bounds, bounds[1:]))


def equal_passes(lengths: Sequence[tuple[int, int]]) -> list[list[tuple[int, int, int]]]:
    """Passes feeding items of (key, n >= 2 tokens), in the given order: each pass a list of
    (key, lo, hi) slices, all of one length, and no item left with a lone token for a
    later pass. Each pass takes the shortest remainder's length from every item, except
    from those it would leave one token short (they wait for a later pass). Items of
    equal length (the drafts of several streams, mostly) share one pass; drafts of 4, 4
    and 6 tokens take two (4 of each, then 2), prompts of 40 and 41 tokens two (40, 41).
    llama.cpp would split unequal items so too (one micro-batch per length), but leave
    a lone token where the difference is one."""
    left = {key: n for key, n in lengths}
    fed = dict.fromkeys(left, 0)
    passes = []
    while left:
        t = min(left.values())
        segments = [(key, fed[key], fed[key] + t) for key in left if left[key] - t != 1]
        passes.append(segments)
        for key, _, _ in segments:
            fed[key] += t
            left[key] -= t
            if not left[key]:
                del left[key]
    return passes
