"""Pick the next token from logits.

Order as llama.cpp's default chain: penalties over the recent history, logit bias,
top-k, then top-p and min-p on the unscaled distribution, then temperature, then a draw
from a seeded generator (same seed, same tokens). Greedy with nothing to adjust asks the
backend's logits handle for its argmax (no row is copied to the host): that is the hot path.

An output constraint (`engine/constraint.py`) masks the logits after penalties and bias,
so every later step (top-k, top-p, the draw, the logprobs) sees only allowed tokens, and
the sampler advances it with each token it picks. Greedy decoding first asks whether the
unmasked argmax is allowed (one token, no mask): when it is, it is also the masked argmax.

Log probabilities come from the distribution the draw uses before it is cut to the
candidates: log-softmax of the adjusted, masked logits divided by the temperature (by 1
for greedy, where they are the model's own log-softmax when nothing adjusts them).
"""

from __future__ import annotations

import numpy as np

from localllm.backend.protocol import Logits
from localllm.types import SamplingParams, TokenLogprob


class Sampler:
    """`constraint`: a `TokenMatcher` the sampler masks with and advances; `logprobs`:
    None, or how many alternatives `last_logprob` lists after each pick."""

    def __init__(self, params: SamplingParams, vocab_size: int, *, constraint=None, logprobs: int | None = None):
        self.params = params
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(params.seed)
        self.constraint = constraint
        self.logprobs = logprobs
        # The last picked token's log probability (when `logprobs` is set).
        self.last_logprob: TokenLogprob | None = None
        self._plain_greedy = (params.greedy and not params.has_penalties and not params.logit_bias
                              and logprobs is None)
        if params.logit_bias:
            ids = [t for t in params.logit_bias if 0 <= t < vocab_size]
            self._bias_ids = np.array(ids, dtype=np.int64)
            self._bias_vals = np.array([params.logit_bias[t] for t in ids], dtype=np.float32)

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing to adjust, constrain or report: the argmax of the logits
        is the token (speculative verification takes every row's at once)."""
        return self._plain_greedy and self.constraint is None

    def sample_row(self, logits: Logits, row: int, history: list[int]) -> int:
        """`sample` for row `row` of a backend's logits handle, copying the row to the
        host only when something besides a plain argmax needs it."""
        if self._plain_greedy:
            token = int(logits.argmax()[row])
            c = self.constraint
            if c is None:
                return token
            if c.allows(token):
                c.accept(token)
                return token
        return self.sample(logits.numpy(row), history)

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        """Choose a token given the logits of the next position and all tokens so far."""
        if self._plain_greedy and self.constraint is None:
            return int(np.argmax(logits))
        x = self._adjusted(logits, history)
        if self.params.greedy:
            token = int(np.argmax(x))
        else:
            ids, probs = self._candidates(x)
            choice = int(np.searchsorted(np.cumsum(probs), self.rng.random(), side="right"))
            token = int(ids[min(choice, ids.size - 1)])
        if self.logprobs is not None:
            self.last_logprob = self._logprob(x, token)
        if self.constraint is not None:
            self.constraint.accept(token)
        return token

    def _logprob(self, x: np.ndarray, token: int) -> TokenLogprob:
        scaled = x if self.params.greedy else x / self.params.temperature
        top = scaled.max()
        logp = scaled - (top + np.log(np.exp(scaled - top, dtype=np.float64).sum()))
        n = min(self.logprobs, logp.size)
        alternatives: tuple = ()
        if n > 0:
            ids = np.argpartition(-logp, n - 1)[:n]
            ids = ids[np.argsort(-logp[ids], kind="stable")]
            alternatives = tuple((int(i), float(logp[i])) for i in ids if np.isfinite(logp[i]))
        return TokenLogprob(token, float(logp[token]), alternatives)

    def distribution(self, logits: np.ndarray, history: list[int] = ()) -> np.ndarray:
        """The full-vocabulary distribution `sample` draws from, zero outside the kept
        candidates and the constraint's mask (for tests and speculative verification).
        It does not advance the constraint."""
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
        if self.constraint is not None:
            allowed = self.constraint.mask()
            x[: allowed.size][~allowed] = -np.inf
            x[allowed.size:] = -np.inf  # padding past the vocabulary is never a token
        return x

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k, then top-p and min-p on the unscaled distribution, then temperature:
        the kept token ids (most likely first) and their probabilities."""
        p = self.params
        k = p.top_k if 0 < p.top_k < x.size else x.size
        ids = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
        ids = ids[np.argsort(-x[ids], kind="stable")]
        probs = _softmax(x[ids])
        # Tokens a constraint masked out (-inf) never count as candidates.
        keep = max(1, int(np.count_nonzero(np.isfinite(x[ids]))))
        if p.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p, side="left")) + 1)
        if p.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
        ids = ids[:keep]
        return ids, _softmax(x[ids] / p.temperature)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float64)
    return e / e.sum()
