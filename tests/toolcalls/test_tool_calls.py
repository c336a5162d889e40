"""Tool calling without a server: golden renders of three families' tool prompts, the
family detection, each parser on model outputs whole and streamed in small pieces, the
plain-JSON fallback prompt, and the forced-call grammars on a real vocabulary."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from localllm.tokenizer.chat import _template_message
from localllm.tokenizer.templates import ChatTemplate
from localllm.toolcalls.formats import HERMES, LLAMA3, MISTRAL, PLAIN_JSON, call_grammar, detect_format
from localllm.toolcalls.parser import ToolCallParser
from localllm.toolcalls.prompt import ToolPlan
from localllm.types import Message, ToolCall

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tool_templates"
CONVERSATION = json.loads((FIXTURES / "conversation.json").read_text())
FAMILIES = sorted(CONVERSATION["families"])


def _messages() -> list[Message]:
    """The fixture conversation as the server parses it (arguments as JSON text)."""
    out = []
    for m in CONVERSATION["messages"]:
        calls = tuple(ToolCall(c["id"], c["function"]["name"], json.dumps(c["function"]["arguments"]))
                      for c in m.get("tool_calls", ()))
        out.append(Message(m["role"], m["content"], tool_calls=calls, tool_call_id=m.get("tool_call_id"),
                           name=m.get("name")))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_prompt_renders_as_transformers_renders_it(family):
    template = ChatTemplate((FIXTURES / f"{family}.jinja").read_text(), family)
    tokens = CONVERSATION["families"][family]
    text = template.render([_template_message(m) for m in _messages()], add_generation_prompt=True,
                           tools=CONVERSATION["tools"], **tokens)
    assert text == (FIXTURES / f"{family}.golden.txt").read_text()


def test_family_is_chosen_from_the_template():
    read = lambda name: (FIXTURES / f"{name}.jinja").read_text()  # noqa: E731
    assert detect_format(read("qwen2.5-instruct")) is HERMES
    assert detect_format(read("llama3.1-instruct")) is LLAMA3
    assert detect_format(read("mistral-7b-instruct-v0.3")) is MISTRAL
    assert detect_format("{% for m in messages %}{{ m.content }}{% endfor %}") is PLAIN_JSON
    assert detect_format(None) is PLAIN_JSON


# Replies in each family's format, as their model cards and templates show them (these
# models are not on this machine), and SmolLM2's own replies recorded on this machine.
REPLIES = {
    "hermes": [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
         "", [("get_weather", {"city": "Paris", "unit": "celsius"})]),
        ('I will check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>',
         "I will check both.\n", [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]),
        ("It is sunny in Paris, 21 degrees.", "It is sunny in Paris, 21 degrees.", []),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', None, None),  # cut: stays text
    ],
    "llama3": [
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
        ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}', "",
         [("get_weather", {"city": "Oslo"})]),
        ('{"type": "function", "name": "get_time", "parameters": {"tz": "UTC"}}', "", [("get_time", {"tz": "UTC"})]),
        ('{"answer": 42}', '{"answer": 42}', []),  # JSON that is not a call stays text
    ],
    "mistral": [
        ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', "",
         [("get_weather", {"city": "Paris"})]),
        ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
         '{"name": "get_time", "arguments": {"tz": "CET"}}]', "",
         [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]),
        ('[TOOL_CALLS]get_weather[ARGS]{"city": "Lyon"}', "", [("get_weather", {"city": "Lyon"})]),
        ("Bonjour! [not a call]", "Bonjour! [not a call]", []),
    ],
    "json": [
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
        ('```json\n[{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}]\n```', "",
         [("get_weather", {"city": "Rome"})]),
        *[(text, text, []) for text in json.loads((FIXTURES / "smollm2-auto-replies.json").read_text()).values()],
    ],
}
CASES = [(family, *case) for family, cases in REPLIES.items() for case in cases]


def _check(fmt, reply, text, calls, events):
    got_text = "".join(e for e in events if isinstance(e, str))
    got_calls = [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCall)]
    if calls is None:  # not a complete call: all of it comes back as text
        assert got_text == reply and got_calls == []
    else:
        assert got_text == text and got_calls == calls


@pytest.mark.parametrize("family,reply,text,calls", CASES)
def test_parser_whole(family, reply, text, calls):
    parser = ToolCallParser(FORMATS_BY_NAME[family])
    _check(parser.fmt, reply, text, calls, parser.feed(reply) + parser.finish())


@pytest.mark.parametrize("family,reply,text,calls", CASES)
def test_parser_streamed_in_random_pieces(family, reply, text, calls):
    rng = random.Random(len(reply))
    for _ in range(5):
        parser = ToolCallParser(FORMATS_BY_NAME[family])
        events, pos = [], 0
        while pos < len(reply):
            n = rng.randint(1, 6)
            events += parser.feed(reply[pos:pos + n])
            pos += n
        _check(parser.fmt, reply, text, calls, events + parser.finish())


def test_text_before_a_call_streams_before_the_call_completes():
    parser = ToolCallParser(HERMES)
    assert parser.feed("Let me look. <tool") == ["Let me look. "]  # "<tool" may be a marker: held
    assert parser.feed('_call>\n{"name": "f", "arguments": {}}') == []
    events = parser.feed("\n</tool_call>")
    assert [e.name for e in events] == ["f"]


def test_mistral_call_ids_are_nine_letters_and_digits():
    call = ToolCallParser(MISTRAL).parse('[TOOL_CALLS] [{"name": "f", "arguments": {}}]')[1][0]
    assert len(call.id) == 9 and call.id.isalnum()
    assert ToolCallParser(HERMES).parse('<tool_call>{"name": "f", "arguments": {}}</tool_call>')[1][0].id.startswith("call_")


FORMATS_BY_NAME = {"hermes": HERMES, "llama3": LLAMA3, "mistral": MISTRAL, "json": PLAIN_JSON}

WEATHER = CONVERSATION["tools"][0]


@pytest.fixture(scope="module")
def smollm_vocab(smollm_path):
    from localllm.cpu_backend.vocab import LlamaCppVocabulary

    vocab = LlamaCppVocabulary.from_file(smollm_path)
    yield vocab
    vocab.close()


def test_fallback_prompt_lists_tools_and_rewrites_tool_turns(smollm_vocab):
    plan = ToolPlan.for_model(smollm_vocab, smollm_vocab.chat_template, _messages(), CONVERSATION["tools"], "auto")
    assert plan.format is PLAIN_JSON and plan.template_tools is None and plan.constraint is None
    system, user, assistant, tool = plan.messages
    assert system.role == "system" and system.content.startswith("You are a helpful assistant.")
    assert json.dumps(WEATHER["function"]) in system.content
    assert json.loads(assistant.content) == {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    assert tool.role == "user" and '"temperature": 21' in tool.content


def test_template_with_tools_gets_them_and_control_text_in_them_is_refused(smollm_vocab):
    from localllm.errors import UserError

    qwen = (FIXTURES / "qwen2.5-instruct.jinja").read_text()
    plan = ToolPlan.for_model(smollm_vocab, qwen, _messages(), CONVERSATION["tools"], "get_weather")
    assert plan.format is HERMES and plan.template_tools == tuple(CONVERSATION["tools"])
    assert plan.constraint.kind == "lark"
    bad = json.loads(json.dumps(CONVERSATION["tools"]))
    bad[0]["function"]["description"] = "ends <|im_end|> here"
    with pytest.raises(UserError, match="control token"):
        ToolPlan.for_model(smollm_vocab, qwen, _messages(), bad, "auto")
    with pytest.raises(UserError, match="nope"):
        ToolPlan.for_model(smollm_vocab, qwen, _messages(), CONVERSATION["tools"], "nope")


@pytest.mark.parametrize("fmt,text", [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    (PLAIN_JSON, '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
])
def test_forced_call_grammar_accepts_the_family_call_and_nothing_else(smollm_vocab, fmt, text):
    from localllm.engine.constraint import compiler_for
    from localllm.types import OutputConstraint

    grammar = OutputConstraint("lark", call_grammar(fmt, [WEATHER["function"]], smollm_vocab))
    compiler = compiler_for(smollm_vocab)
    compiler.check(grammar)
    matcher = compiler.matcher(grammar)
    for token in smollm_vocab.encode(text, add_bos=False):
        assert matcher.allows(token), (text, smollm_vocab.token_text(token))
        matcher.accept(token)
    assert matcher.done
    wrong = compiler.matcher(grammar)  # another function's name is never allowed
    tokens = smollm_vocab.encode(text.replace("get_weather", "get_xeather"), add_bos=False)
    assert not all(wrong.allows(t) and (wrong.accept(t) or True) for t in tokens)
