"""Which token producer a request gets from its `DraftParams`."""

from __future__ import annotations

from localllm.engine.generate import TokenProducer, plain_decoding
from localllm.speculative.adaptive import AdaptiveDraftPolicy, AlwaysDraftPolicy
from localllm.speculative.prompt_lookup import prompt_lookup_factory
from localllm.speculative.verify import SpeculativeDecoding
from localllm.types import DraftParams


def producer_for(params: DraftParams, learner: AdaptiveDraftPolicy,
                 max_new_tokens: int | None = None) -> TokenProducer:
    """Plain decoding for mode "none"; else prompt-lookup drafting with verification,
    adaptive (`learner`, the model's policy) for "auto", every draft for "prompt-lookup"."""
    if params.mode == "none":
        return plain_decoding
    policy = learner if params.mode == "auto" else AlwaysDraftPolicy(learner)
    return SpeculativeDecoding(prompt_lookup_factory(ngram_max=params.ngram), policy,
                               params.max_tokens, max_new_tokens)
