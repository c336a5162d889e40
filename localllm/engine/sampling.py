"""Pick the next token from logits.

Order as llama.cpp's default chain: penalties over the recent history, logit bias,
top-k, then top-p and min-p on the unscaled distribution, then temperature, then a draw
from a seeded generator (same seed, same tokens). Greedy with nothing to adjust asks the
backend's logits handle for its argmax (no row is copied to the host): that is the hot path.
"""

from __future__ import annotations

import numpy as np

from localllm.backend.protocol import Logits
from localllm.types import SamplingParams


class Sampler:
    def __init__(self, params: SamplingParams, vocab_size: int):
        self.params = params
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(params.seed)
        self._plain_greedy = params.greedy and not params.has_penalties and not params.logit_bias
        if params.logit_bias:
            ids = [t for t in params.logit_bias if 0 <= t < vocab_size]
            self._bias_ids = np.array(ids, dtype=np.int64)
            self._bias_vals = np.array([params.logit_bias[t] for t in ids], dtype=np.float32)

    def sample_row(self, logits: Logits, row: int, history: list[int]) -> int:
        """`sample` for row `row` of a backend's logits handle, copying the row to the
        host only when something besides a plain argmax needs it."""
        if self._plain_greedy:
            return int(logits.argmax()[row])
        return self.sample(logits.numpy(row), history)

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        """Choose a token given the logits of the next position and all tokens so far."""
        if self._plain_greedy:
            return int(np.argmax(logits))
        x = self._adjusted(logits, history)
        if self.params.greedy:
            return int(np.argmax(x))
        ids, probs = self._candidates(x)
        choice = int(np.searchsorted(np.cumsum(probs), self.rng.random(), side="right"))
        return int(ids[min(choice, ids.size - 1)])

    def distribution(self, logits: np.ndarray, history: list[int] = ()) -> np.ndarray:
        """The full-vocabulary distribution `sample` draws from, zero outside the kept
        candidates (for tests and speculative verification)."""
        x = self._adjusted(logits, list(history))
        out = np.zeros(x.size, dtype=np.float64)
        if self.params.greedy:
            out[int(np.argmax(x))] = 1.0
        else:
            ids, probs = self._candidates(x)
            out[ids] = probs
        return out

    def _adjusted(self, logits: np.ndarray, history: list[int]) -> np.ndarray:
        """A copy of the logits with penalties and logit bias applied."""
        p = self.params
        x = np.array(logits[: self.vocab_size], dtype=np.float32)
        if p.has_penalties and history:
            window = history[-p.repeat_last_n :] if p.repeat_last_n > 0 else history
            ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
            v = x[ids]
            if p.repeat_penalty != 1.0:
                v = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
            x[ids] = v - (counts * p.frequency_penalty + p.presence_penalty)
        if p.logit_bias:
            x[self._bias_ids] += self._bias_vals
        return x

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k, then top-p and min-p on the unscaled distribution, then temperature:
        the kept token ids (most likely first) and their probabilities."""
        p = self.params
        k = p.top_k if 0 < p.top_k < x.size else x.size
        ids = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
        ids = ids[np.argsort(-x[ids], kind="stable")]
        probs = _softmax(x[ids])
        keep = probs.size
        if p.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p, side="left")) + 1)
        if p.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
        ids = ids[:keep]
        return ids, _softmax(x[ids] / p.temperature)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float64)
    return e / e.sum()
