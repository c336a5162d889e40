"""A reply cut by its token limit inside a multi-byte character ends before that
character, never in U+FFFD: both APIs, streamed and not.

stories260K never writes byte tokens on its own, so the test model is a copy whose
vocabulary swaps the piece `▁the` with the byte token <0xE6> (the first byte of a
three-byte character; both spellings are six bytes, so the header is edited in place):
wherever the model writes " the", the stream gets a lone lead byte.
"""

from __future__ import annotations

import shutil

import pytest
from ollama import Client
from openai import OpenAI

from localllm.server.config import ServerConfig
from tests.server.conftest import server_settings, start_server, wait_until

THE, LEAD_BYTE = 265, 3 + 0xE6  # token ids in stories260K's vocabulary
PROMPT = "Once upon a time"


def swap_tokens(path, a: int, b: int) -> None:
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    texts, types = reader.fields["tokenizer.ggml.tokens"], reader.fields["tokenizer.ggml.token_type"]
    ta, tb = texts.parts[texts.data[a]], texts.parts[texts.data[b]]
    assert len(ta) == len(tb)
    saved = bytes(ta)
    ta[:] = list(bytes(tb))
    tb[:] = list(saved)
    ka, kb = types.parts[types.data[a]], types.parts[types.data[b]]
    saved_type = int(ka[0])
    ka[0] = int(kb[0])
    kb[0] = saved_type
    del reader


@pytest.fixture(scope="module")
def lead_byte_model(stories_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("lead-byte") / "stories-lead-byte.gguf"
    shutil.copy(stories_path, path)
    swap_tokens(path, THE, LEAD_BYTE)
    return path


@pytest.fixture(scope="module")
def cut(lead_byte_model, tmp_path_factory):
    """(server, max_tokens) where the greedy reply's last token is the lone lead byte."""
    home = tmp_path_factory.mktemp("lead-byte-home")
    running = start_server(ServerConfig(port=0, preload=str(lead_byte_model)), server_settings(home))
    wait_until(lambda: any(s.state == "ready" for s in running.state.models.slots()), timeout=60)
    model = running.state.models.slots()[0].model
    from localllm.types import SamplingParams

    tokens = [c.token for c in model.complete(PROMPT, SamplingParams(temperature=0), max_tokens=60)
              if c.token is not None]
    assert THE in tokens, "the greedy story no longer writes ' the': pick another token to swap"
    yield running, tokens.index(THE) + 1
    running.stop()


def test_ollama_reply_cut_inside_a_character_has_no_replacement_character(cut, lead_byte_model):
    running, n = cut
    client = Client(host=running.url, timeout=60)
    options = {"temperature": 0, "num_predict": n}
    whole = client.generate(model=str(lead_byte_model), prompt=PROMPT, raw=True, options=options)
    assert whole.done_reason == "length" and whole.eval_count == n
    streamed = "".join(p.response for p in client.generate(
        model=str(lead_byte_model), prompt=PROMPT, raw=True, stream=True, options=options))
    for text in (whole.response, streamed):
        assert text and "\ufffd" not in text, text
    assert streamed == whole.response


def test_openai_reply_cut_inside_a_character_has_no_replacement_character(cut, lead_byte_model):
    running, n = cut
    with OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        whole = client.completions.create(model=str(lead_byte_model), prompt=PROMPT, temperature=0, max_tokens=n)
        stream = client.completions.create(model=str(lead_byte_model), prompt=PROMPT, temperature=0, max_tokens=n,
                                           stream=True)
        streamed = "".join(c.choices[0].text for c in stream if c.choices)
    assert whole.choices[0].finish_reason == "length"
    for text in (whole.choices[0].text, streamed):
        assert text and "\ufffd" not in text, text
    assert streamed == whole.choices[0].text
