"""Shared pieces of the speculative decoding tests: running one generation with a chosen
producer, and a drafter that knows the answer (to put accepted and rejected drafts
exactly where a test needs them)."""

from __future__ import annotations

from typing import Callable, Sequence

from localllm.engine.generate import generate
from localllm.speculative.adaptive import AdaptiveDraftPolicy, AlwaysDraftPolicy
from localllm.speculative.drafter import Draft
from localllm.speculative.prompt_lookup import prompt_lookup_factory
from localllm.speculative.verify import SpeculativeDecoding
from localllm.types import GenerationRequest, SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def always_drafting(draft_max: int = 8, ngram: int = 3, max_new_tokens: int | None = None) -> SpeculativeDecoding:
    """`--draft prompt-lookup`: every draft verified."""
    return SpeculativeDecoding(prompt_lookup_factory(ngram), AlwaysDraftPolicy(AdaptiveDraftPolicy()),
                               draft_max, max_new_tokens)


def run(backend, prompt: Sequence[int], producer, max_tokens: int | None = 100, sampling=GREEDY,
        stop: Sequence[str] = (), stop_token_ids=frozenset(), cancelled: Callable[[], bool] = lambda: False):
    """(tokens, chunks, cache) of one generation from an empty cache."""
    cache = backend.new_cache()
    request = GenerationRequest(tuple(prompt), sampling, max_tokens=max_tokens, stop=tuple(stop),
                                stop_token_ids=frozenset(stop_token_ids), ignore_eos=False)
    chunks = list(generate(backend, cache, request, cancelled, producer))
    return [c.token for c in chunks if c.token is not None], chunks, cache


class ScriptedDrafter:
    """Proposes the known answer (`answer`: the tokens plain decoding generates after
    `n_prompt` tokens), with the tokens at `wrong` positions replaced by `wrong_token`,
    and checks on every proposal that the cache holds exactly the confirmed context but
    its pending last token (so rejected drafts were cut off)."""

    def __init__(self, context, answer, n_prompt, wrong=frozenset(), wrong_token=0, cache_of=None):
        self.context = list(context)
        self.answer, self.n_prompt = list(answer), n_prompt
        self.wrong, self.wrong_token = set(wrong), wrong_token
        self.cache_of = cache_of  # () -> the cache being decoded into
        self.proposals = 0

    def append(self, token: int) -> None:
        self.context.append(token)

    def propose(self, k: int) -> Draft | None:
        if self.cache_of is not None:
            assert self.cache_of().tokens == self.context[:-1]
        pos = len(self.context) - self.n_prompt
        tokens = tuple(self.wrong_token if pos + i in self.wrong else t
                       for i, t in enumerate(self.answer[pos:pos + k]))
        self.proposals += 1
        return Draft(tokens, 3) if tokens else None


def scripted(answer, n_prompt, draft_max=8, max_new_tokens=None, **kw) -> tuple[SpeculativeDecoding, list]:
    """A verifying producer over `ScriptedDrafter`s; the list collects the drafters made."""
    made = []

    def factory(context):
        made.append(ScriptedDrafter(context, answer, n_prompt, **kw))
        return made[-1]

    return SpeculativeDecoding(factory, AlwaysDraftPolicy(AdaptiveDraftPolicy()), draft_max, max_new_tokens), made
