"""Golden renders of real chat templates (their text kept in templates/), checked by hand
against each family's documented prompt format, plus template errors and overrides."""

from __future__ import annotations

import json

import pytest

from localllm.errors import UserError
from localllm.tokenizer.templates import (
    ChatTemplate,
    ChatTemplateError,
    ChatTemplateRefused,
    find_chat_template,
    load_template_file,
)
from tests.tokenizer.tokenizer_fixtures import fixed_clock, template_text

SYSTEM = {"role": "system", "content": "You are terse."}
CHAT = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2?"},
]

# name: (template file, bos_token, eos_token)
FAMILIES = {
    "llama3": ("llama-3.2-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2.5": ("qwen2.5-instruct.jinja", "", "<|im_end|>"),
    "mistral-v0.3": ("mistral-7b-instruct-v0.3.jinja", "<s>", "</s>"),
    "gemma2": ("gemma-2-it.jinja", "<bos>", "<eos>"),
    "phi3.5": ("phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>"),
}

LLAMA3_HEADER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 03 Sep 2024\n\n"
)
LLAMA3_TURNS = (
    "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
QWEN_TURNS = (
    "<|im_start|>user\nHi there!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GEMMA_TURNS = (
    "<start_of_turn>user\nHi there!<end_of_turn>\n"
    "<start_of_turn>model\nHello.<end_of_turn>\n"
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
    "<start_of_turn>model\n"
)
PHI_TURNS = (
    "<|user|>\nHi there!<|end|>\n"
    "<|assistant|>\nHello.<|end|>\n"
    "<|user|>\nWhat is 2+2?<|end|>\n"
    "<|assistant|>\n"
)

GOLDEN_WITH_SYSTEM = {
    "llama3": LLAMA3_HEADER + "You are terse.<|eot_id|>" + LLAMA3_TURNS,
    "qwen2.5": "<|im_start|>system\nYou are terse.<|im_end|>\n" + QWEN_TURNS,
    # Mistral v0.3 puts the system prompt into the last user message.
    "mistral-v0.3": "<s>[INST] Hi there![/INST] Hello.</s>[INST] You are terse.\n\nWhat is 2+2?[/INST]",
    "phi3.5": "<|system|>\nYou are terse.<|end|>\n" + PHI_TURNS,
}
GOLDEN_WITHOUT_SYSTEM = {
    "llama3": LLAMA3_HEADER + "<|eot_id|>" + LLAMA3_TURNS,
    # Qwen2.5 supplies its own default system prompt.
    "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    + QWEN_TURNS,
    "mistral-v0.3": "<s>[INST] Hi there![/INST] Hello.</s>[INST] What is 2+2?[/INST]",
    "gemma2": "<bos>" + GEMMA_TURNS,
    "phi3.5": PHI_TURNS,
}


def render(family: str, messages, **kwargs) -> str:
    name, bos, eos = FAMILIES[family]
    template = ChatTemplate(template_text(name), family, clock=fixed_clock)
    return template.render(messages, bos_token=bos, eos_token=eos, **kwargs)


@pytest.mark.parametrize("family", sorted(GOLDEN_WITH_SYSTEM))
def test_golden_with_system_message(family):
    assert render(family, [SYSTEM, *CHAT]) == GOLDEN_WITH_SYSTEM[family]


@pytest.mark.parametrize("family", sorted(GOLDEN_WITHOUT_SYSTEM))
def test_golden_without_system_message(family):
    assert render(family, CHAT) == GOLDEN_WITHOUT_SYSTEM[family]


def test_gemma2_refuses_a_system_message():
    with pytest.raises(ChatTemplateRefused, match="System role not supported") as e:
        render("gemma2", [SYSTEM, *CHAT])
    message = str(e.value)
    assert "gemma2" in message and "--chat-template FILE" in message
    assert isinstance(e.value, UserError)


def test_without_generation_prompt():
    one_turn = [{"role": "user", "content": "Hi there!"}]
    assert render("qwen2.5", one_turn, add_generation_prompt=False).endswith("<|im_start|>user\nHi there!<|im_end|>\n")
    assert render("gemma2", one_turn, add_generation_prompt=False) == "<bos><start_of_turn>user\nHi there!<end_of_turn>\n"
    # Phi-3.5 ends a conversation without a generation prompt with EOS.
    assert render("phi3.5", one_turn, add_generation_prompt=False) == "<|user|>\nHi there!<|end|>\n<|endoftext|>"
    assert render("llama3", one_turn, add_generation_prompt=False).endswith("Hi there!<|eot_id|>")


def test_trims_where_the_template_trims():
    padded = [{"role": "user", "content": "  Hi there!\n"}]
    assert "\n\nHi there!<|eot_id|>" in render("llama3", padded)
    assert "<start_of_turn>user\nHi there!<end_of_turn>" in render("gemma2", padded)
    assert "<|im_start|>user\n  Hi there!\n<|im_end|>" in render("qwen2.5", padded)


def test_llama3_prints_todays_date_through_strftime_now():
    template = ChatTemplate(template_text("llama-3.2-instruct.jinja"), "llama3")  # real clock
    import datetime

    today = datetime.datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {today}\n" in template.render(CHAT, bos_token="<|begin_of_text|>")


def test_tools_reach_the_template_and_tojson_does_not_escape():
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather <in> a 'city' & more",
                                             "parameters": {"type": "object", "properties": {}}}}
    text = render("qwen2.5", CHAT, tools=[tool])
    assert "# Tools" in text
    assert json.dumps(tool, ensure_ascii=False) in text  # keys in order, no HTML escapes
    llama = render("llama3", CHAT, tools=[tool])
    assert "Environment: ipython\n" in llama and json.dumps(tool, indent=4) in llama


def test_syntax_error_is_kept_until_used():
    template = ChatTemplate("{% for m in messages %}{{ m.content }", "broken-model")
    assert isinstance(template.error, ChatTemplateError)
    with pytest.raises(ChatTemplateError, match=r"chat template of broken-model is broken .*--chat-template FILE"):
        template.render(CHAT)


def test_runtime_errors_and_sandbox():
    with pytest.raises(ChatTemplateError, match="failed"):
        ChatTemplate("{{ messages[0].content + 1 }}", "m").render(CHAT)
    with pytest.raises(ChatTemplateError, match="m"):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "m").render(CHAT)
    with pytest.raises(ChatTemplateError):  # immutable sandbox: no list.append
        ChatTemplate("{% set xs = [] %}{{ xs.append(1) }}", "m").render(CHAT)


def test_generation_tag_and_loop_controls():
    source = ("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
              "{% generation %}{{ m.content }}|{% endgeneration %}{% endfor %}")
    assert ChatTemplate(source).render(CHAT) == "Hi there!|Hello.|"


def test_load_template_file(tmp_path):
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{{ messages[0].content }}")
    assert load_template_file(jinja) == "{{ messages[0].content }}"
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "T"},
                                                    {"name": "default", "template": "D"}]}))
    assert load_template_file(config) == "D"
    with pytest.raises(UserError, match="cannot read it"):
        load_template_file(tmp_path / "missing.jinja")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}")
    with pytest.raises(UserError, match="not a valid Jinja template"):
        load_template_file(bad)
    empty = tmp_path / "empty.jinja"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        load_template_file(empty)


def test_find_chat_template_in_a_model_folder(tmp_path):
    assert find_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from config"}))
    assert find_chat_template(tmp_path) == "from config"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "from chat_template.json"}))
    assert find_chat_template(tmp_path) == "from chat_template.json"
    (tmp_path / "chat_template.jinja").write_text("from jinja")
    assert find_chat_template(tmp_path) == "from jinja"
