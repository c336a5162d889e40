"""A job's prompt to tokens for one loaded model, with the checks that need the model:
context room (a 400 naming the numbers), token ids and logit-bias ids inside the
vocabulary, FIM tokens present. Runs in a worker thread: templates and tokenizers are
CPU work the event loop must not wait on.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, replace

from localllm.errors import ContextOverflowError, UserError
from localllm.server.drafting import draft_for
from localllm.server.errors import BadRequest
from localllm.server.fim import InfillBudget, infill_tokens
from localllm.server.jobs import ChatPrompt, GenerationJob, InfillPrompt, MixedPrompt, TextPrompt, TokenPrompt
from localllm.tokenizer.cancel import cancel_scope
from localllm.toolcalls.formats import ToolCallFormat
from localllm.toolcalls.prompt import ToolPlan
from localllm.types import GenerationRequest, Message


@dataclass(frozen=True)
class PreparedPrompt:
    request: GenerationRequest
    dropped_messages: int = 0
    truncated: bool = False
    tool_format: ToolCallFormat | None = None  # set when the reply may hold tool calls


def _check_ids(tokens, vocab: int) -> None:
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise BadRequest(f"token id {bad[0]} in 'prompt' is outside the vocabulary of {vocab} tokens", param="prompt")


def _mixed_tokens(model, parts) -> list[int]:
    """llama-server's mixed prompt: the first text piece starts the sequence (BOS where the
    model uses one), every text piece parses special tokens, ids pass as they are."""
    tokens: list[int] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            tokens += model.text_tokens(part, special=True) if i == 0 else \
                model.tokenizer.encode(part, add_bos=False, special=True)
        else:
            tokens.append(part)
    _check_ids(tokens, model.vocab_size)
    return tokens


def tool_plan(model, job: GenerationJob) -> ToolPlan | None:
    """How the job's tools and tool turns reach this model's prompt, or None when the
    chat has neither."""
    if not isinstance(job.prompt, ChatPrompt):
        return None
    messages = job.prompt.messages
    if not job.tools and not any(m.tool_calls or m.role == "tool" for m in messages):
        return None
    return ToolPlan.for_model(model.tokenizer, model.prompter.template, messages, job.tools, job.tool_choice)


def prompt_tokens(model, job: GenerationJob, plan: ToolPlan | None = None) -> tuple[list[int], int]:
    """(tokens, messages the overflow policy dropped)."""
    prompt = job.prompt
    if isinstance(prompt, ChatPrompt):
        messages = list(plan.messages if plan is not None else prompt.messages)
        tools = plan.template_tools if plan is not None else None
        if model.overflow == "drop-oldest":
            return model.fit_chat(messages, job.max_tokens, tools=tools)
        return model.chat_tokens(messages, tools=tools), 0
    if isinstance(prompt, TextPrompt):
        if prompt.templated and model.prompter.has_template:
            messages = ([Message("system", prompt.system)] if prompt.system else []) + [Message("user", prompt.text)]
            return model.chat_tokens(messages), 0
        text = f"{prompt.system}\n\n{prompt.text}" if prompt.system else prompt.text
        return model.text_tokens(text, special=prompt.special), 0
    if isinstance(prompt, TokenPrompt):
        _check_ids(prompt.tokens, model.vocab_size)
        return list(prompt.tokens), 0
    if isinstance(prompt, MixedPrompt):
        return _mixed_tokens(model, prompt.parts), 0
    raise TypeError(f"unknown prompt kind {type(prompt).__name__}")


def infill_prompt(model, job: GenerationJob) -> tuple[list[int], bool]:
    """(tokens, whether the budget cut them) for a fill-in-the-middle job, or a 400."""
    prompt = job.prompt
    budget = InfillBudget.for_context(model.n_ctx, job.max_tokens) if prompt.repository else None
    layout = infill_tokens(model, prompt.prefix, prompt.suffix, typed=prompt.typed, extra=prompt.extra,
                           repository=prompt.repository, budget=budget)
    if layout is None:
        what = "/infill" if prompt.repository else "'suffix'"
        raise BadRequest(
            f"model '{job.model}' has no fill-in-the-middle tokens in its vocabulary, so {what} cannot be "
            "used with it: use a code model with FIM tokens (Qwen2.5-Coder, StarCoder2, CodeLlama, "
            "DeepSeek-Coder, CodeGemma)" + ("" if prompt.repository else " or leave 'suffix' out"),
            param="suffix", code="fim_unsupported")
    return layout.tokens, layout.truncated


def check_context(model, job: GenerationJob, n_prompt: int) -> None:
    """The model's context rule (`LoadedModel.check_context`), worded for the API: which
    field to change, and by how much."""
    what = "messages" if isinstance(job.prompt, ChatPrompt) else "prompt"
    if n_prompt == 0:
        raise BadRequest(f"'{what}' is empty: give some text to continue", param=what)
    try:
        model.check_context(n_prompt, job.max_tokens)
    except ContextOverflowError as e:
        if e.prompt_tokens < e.limit:  # the prompt fits; the reply asked for does not
            raise BadRequest(
                f"the prompt has {e.prompt_tokens} tokens and {job.max_tokens_param} asks for {e.reserve} more: "
                f"{e.prompt_tokens + e.reserve} exceeds the context of {e.limit} tokens; lower {job.max_tokens_param} "
                f"to at most {e.limit - e.prompt_tokens} or shorten the prompt",
                param=job.max_tokens_param, code="context_length_exceeded") from None
        raise BadRequest(
            f"the prompt has {e.prompt_tokens} tokens but the context of model '{job.model}' holds {e.limit}: "
            "shorten the prompt (the server's context is set with --ctx-size)",
            param=what, code="context_length_exceeded") from None


def with_model_defaults(model, job: GenerationJob) -> GenerationJob:
    """`job` with a created model's parameters, stop strings, reply limit, system prompt
    and opening messages wherever the request did not give its own."""
    defaults = getattr(model, "defaults", None)
    if not defaults:
        return job
    changes: dict = {"sampling": defaults.sampling(job.sampling, job.given)}
    if "max_tokens" not in job.given and defaults.num_predict:
        changes["max_tokens"] = defaults.num_predict
    if "stop" not in job.given and defaults.stop:
        changes["stop"] = defaults.stop
    prompt = job.prompt
    if isinstance(prompt, ChatPrompt):
        changes["prompt"] = ChatPrompt(tuple(defaults.conversation(prompt.messages)))
    elif isinstance(prompt, TextPrompt) and prompt.templated:
        if model.prompter.has_template:
            system = [Message("system", prompt.system)] if prompt.system else []
            changes["prompt"] = ChatPrompt(tuple(defaults.conversation(system + [Message("user", prompt.text)])))
        elif prompt.system is None and defaults.system:
            changes["prompt"] = replace(prompt, system=defaults.system)
    return replace(job, **changes)



def prepare(model, job: GenerationJob, cancel: threading.Event | None = None) -> PreparedPrompt:
    """Tokens and the engine request for `job` on `model`, or a 400. Setting `cancel`
    (the client left) stops the template and the tokenizer at their next check."""
    truncated = False
    job = with_model_defaults(model, job)
    plan = None
    constraint = job.constraint
    try:
        with cancel_scope(cancel), model.in_use():
            if isinstance(job.prompt, InfillPrompt):
                (tokens, truncated), dropped = infill_prompt(model, job), 0
            else:
                plan = tool_plan(model, job)
                tokens, dropped = prompt_tokens(model, job, plan)
            if plan is not None and plan.constraint is not None:
                constraint = plan.constraint  # a forced call: its grammar wins over response_format
            if constraint is not None:
                from localllm.engine.constraint import compiler_for  # numpy: not at server start-up

                compiler_for(model.tokenizer).check(constraint)
    except ContextOverflowError as e:
        raise BadRequest(str(e), code="context_length_exceeded") from None
    except UserError as e:  # a template that refuses these messages, say
        raise BadRequest(str(e)) from None
    check_context(model, job, len(tokens))
    vocab = model.vocab_size
    for token in job.sampling.logit_bias:
        if not 0 <= token < vocab:
            raise BadRequest(f"logit_bias names token {token}, outside the vocabulary of {vocab} tokens",
                             param="logit_bias")
    request = model.request(tokens, job.sampling, job.max_tokens, job.stop,
                            draft=draft_for(job.draft, model.draft_defaults))
    if job.max_tokens == 0:  # prefill only: warm the KV cache (llama-server's n_predict 0)
        request = dataclasses.replace(request, max_tokens=0)
    if job.ignore_eos:
        request = dataclasses.replace(request, ignore_eos=True)
    request = dataclasses.replace(request, constraint=constraint, logprobs=job.logprobs,
                                  special_text_ids=plan.special_text_ids if plan is not None else frozenset())
    # Calls are parsed out of the reply only when the model may call (tools, and not "none").
    parse_calls = plan is not None and job.tools and job.tool_choice != "none"
    return PreparedPrompt(request, dropped, truncated, plan.format if parse_calls else None)
