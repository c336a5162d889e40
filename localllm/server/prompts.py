"""A job's prompt to tokens for one loaded model, with the checks that need the model:
context room (a 400 naming the numbers), token ids and logit-bias ids inside the
vocabulary, FIM tokens present. Runs in a worker thread: templates and tokenizers are
CPU work the event loop must not wait on.
"""

from __future__ import annotations

from dataclasses import dataclass

from localllm.errors import ContextOverflowError, UserError
from localllm.server.errors import BadRequest
from localllm.server.fim import infill_tokens
from localllm.server.jobs import ChatPrompt, GenerationJob, InfillPrompt, TextPrompt, TokenPrompt
from localllm.types import GenerationRequest, Message


@dataclass(frozen=True)
class PreparedPrompt:
    request: GenerationRequest
    dropped_messages: int = 0


def has_chat_template(model) -> bool:
    prompter = model.prompter
    flag = getattr(prompter, "has_template", None)
    return bool(flag) if flag is not None else getattr(prompter, "template", None) is not None


def prompt_tokens(model, job: GenerationJob) -> tuple[list[int], int]:
    """(tokens, messages the overflow policy dropped)."""
    prompt = job.prompt
    if isinstance(prompt, ChatPrompt):
        if getattr(model, "overflow", "refuse") == "drop-oldest" and hasattr(model, "fit_chat"):
            return model.fit_chat(list(prompt.messages), job.max_tokens)
        return model.chat_tokens(list(prompt.messages)), 0
    if isinstance(prompt, TextPrompt):
        if prompt.templated and has_chat_template(model):
            messages = ([Message("system", prompt.system)] if prompt.system else []) + [Message("user", prompt.text)]
            return model.chat_tokens(messages), 0
        text = f"{prompt.system}\n\n{prompt.text}" if prompt.system else prompt.text
        return model.text_tokens(text, special=prompt.special), 0
    if isinstance(prompt, TokenPrompt):
        vocab = model.vocab_size
        bad = [t for t in prompt.tokens if not 0 <= t < vocab]
        if bad:
            raise BadRequest(f"token id {bad[0]} in 'prompt' is outside the vocabulary of {vocab} tokens",
                             param="prompt")
        return list(prompt.tokens), 0
    if isinstance(prompt, InfillPrompt):
        tokens = infill_tokens(model, prompt.prefix, prompt.suffix)
        if tokens is None:
            raise BadRequest(
                f"model '{job.model}' has no fill-in-the-middle tokens in its vocabulary, so 'suffix' cannot be "
                "used with it: use a code model with FIM tokens (Qwen2.5-Coder, StarCoder2, CodeLlama, "
                "DeepSeek-Coder, CodeGemma) or leave 'suffix' out", param="suffix", code="fim_unsupported")
        return tokens, 0
    raise TypeError(f"unknown prompt kind {type(prompt).__name__}")


def check_context(job: GenerationJob, n_prompt: int, n_ctx: int) -> None:
    what = "messages" if isinstance(job.prompt, ChatPrompt) else "prompt"
    if n_prompt == 0:
        raise BadRequest(f"'{what}' is empty: give some text to continue", param=what)
    if n_prompt >= n_ctx:
        raise BadRequest(
            f"the prompt has {n_prompt} tokens but the context of model '{job.model}' holds {n_ctx}: "
            "shorten the prompt (the server's context is set with --ctx-size)",
            param=what, code="context_length_exceeded")
    if job.max_tokens is not None and n_prompt + job.max_tokens > n_ctx:
        raise BadRequest(
            f"the prompt has {n_prompt} tokens and {job.max_tokens_param} asks for {job.max_tokens} more: "
            f"{n_prompt + job.max_tokens} exceeds the context of {n_ctx} tokens; lower {job.max_tokens_param} "
            f"to at most {n_ctx - n_prompt} or shorten the prompt",
            param=job.max_tokens_param, code="context_length_exceeded")


def prepare(model, job: GenerationJob) -> PreparedPrompt:
    """Tokens and the engine request for `job` on `model`, or a 400."""
    try:
        tokens, dropped = prompt_tokens(model, job)
    except ContextOverflowError as e:
        raise BadRequest(str(e), code="context_length_exceeded") from None
    except UserError as e:  # a template that refuses these messages, say
        raise BadRequest(str(e)) from None
    check_context(job, len(tokens), model.n_ctx)
    vocab = model.vocab_size
    for token in job.sampling.logit_bias:
        if not 0 <= token < vocab:
            raise BadRequest(f"logit_bias names token {token}, outside the vocabulary of {vocab} tokens",
                             param="logit_bias")
    request = model.request(tokens, job.sampling, job.max_tokens, job.stop)
    return PreparedPrompt(request, dropped)
