"""Fill-in-the-middle on models built with FIM tokens (Qwen2.5-Coder's and CodeLlama's
conventions): the markers found agree with llama.cpp's own, the token sequence sent to
the backend is the one each family expects (computed here with llama.cpp's tokenizer
and, for CodeLlama, Meta's reference encoding on the real Llama 2 SentencePiece model),
OpenAI `suffix`, Ollama `suffix` and llama-server's `/infill` (context chunks, budget,
prefix reuse while typing) work end to end; a model without FIM tokens gets a 400."""

from __future__ import annotations

import httpx
import pytest

from localllm.server.fim import InfillBudget, find_fim_tokens, infill_tokens
from localllm.server.jobs import GenerationJob, InfillPrompt
from localllm.server.prompts import prepare
from tests.conftest import require_model
from tests.server.conftest import server_settings, start_named_server

PREFIX = "def add(a, b):\n"
TYPED = "    return"
SUFFIX = "\n\nprint(add(1, 2))\n"
EXTRA = (("util.py", "import os\n\ndef sub(a, b):\n    return a - b\n"),)


class LlamaCppVocab:
    """llama.cpp's tokenizer through llama-cpp-python, independent of the server's."""

    def __init__(self, path):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        vocab = self.llm._model.vocab
        self.fim = {k: getattr(llama_cpp, f"llama_vocab_fim_{k}")(vocab) for k in ("pre", "suf", "mid", "rep", "sep")}
        self.bos = llama_cpp.llama_vocab_bos(vocab)

    def text(self, s: str) -> list[int]:
        return self.llm.tokenize(s.encode(), add_bos=False, special=False) if s else []


@pytest.fixture(scope="module")
def loaded(fim_models, tmp_path_factory):
    from localllm.runtime import load_model

    home = tmp_path_factory.mktemp("fim-direct")
    models = {name: load_model(str(path), server_settings(home, ctx_size=512)) for name, path in fim_models.items()}
    yield models
    for model in models.values():
        model.close()


@pytest.fixture(scope="module")
def fim_server(fim_models, stories_path, tmp_path_factory):
    running = start_named_server(dict(fim_models, stories=stories_path), tmp_path_factory.mktemp("fim-home"),
                                 max_loaded=2)
    yield running
    running.stop()


@pytest.fixture
def http(fim_server):
    with httpx.Client(base_url=fim_server.url, timeout=120) as client:
        yield client


def sent_tokens(model, prompt: InfillPrompt, max_tokens: int = 16) -> list[int]:
    """What the server hands the engine for this prompt (the same function it runs)."""
    job = GenerationJob(model="m", prompt=prompt, max_tokens=max_tokens)
    return list(prepare(model, job).request.prompt_tokens)


@pytest.mark.parametrize("name", ["qwen", "codellama", "codellama-nometa"])
def test_markers_agree_with_llama_cpp(loaded, fim_models, name):
    fim = find_fim_tokens(loaded[name])
    ref = LlamaCppVocab(fim_models[name]).fim
    assert (fim.pre, fim.suf, fim.mid) == (ref["pre"], ref["suf"], ref["mid"])
    assert (fim.rep, fim.sep) == (None if ref["rep"] < 0 else ref["rep"], None if ref["sep"] < 0 else ref["sep"])
    if name == "qwen":
        assert fim.rep is not None and fim.sep is not None
    else:
        assert (fim.pre, fim.suf, fim.mid) == (32007, 32008, 32009)


def test_qwen_coder_layout(loaded, fim_models):
    v = LlamaCppVocab(fim_models["qwen"])
    f = v.fim
    plain = [f["pre"], *v.text(PREFIX + TYPED), f["suf"], *v.text(SUFFIX), f["mid"]]
    assert sent_tokens(loaded["qwen"], InfillPrompt(PREFIX + TYPED, SUFFIX)) == plain  # no BOS in this family
    repository = [f["rep"], *v.text("myproject\n"), f["sep"], *v.text("util.py\n"), *v.text(EXTRA[0][1]),
                  f["sep"], *v.text("filename\n"), *plain]
    got = sent_tokens(loaded["qwen"], InfillPrompt(PREFIX, SUFFIX, typed=TYPED, extra=EXTRA, repository=True))
    assert got == repository


def test_codellama_layout_is_metas_reference(loaded, fim_models):
    """Meta's infilling_prompt_tokens: [BOS, <PRE>] + encode(prefix) + [<SUF>] +
    encode_infilling(suffix) + [<MID>], where encode_infilling drops the space
    SentencePiece puts before the first word (encode("☺" + s)[2:])."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(require_model("llama2-tokenizer/tokenizer.model")))
    expected = [1, 32007, *sp.encode(PREFIX + TYPED), 32008, *sp.encode("☺" + SUFFIX)[2:], 32009]
    for name in ("codellama", "codellama-nometa"):
        assert sent_tokens(loaded[name], InfillPrompt(PREFIX + TYPED, SUFFIX)) == expected
    # No repository markers: chunks are set apart by llama.cpp's "--- snippet ---" text.
    v = LlamaCppVocab(fim_models["codellama"])
    chunks = [*v.text("\n\n--- snippet ---\n\n"), *v.text(EXTRA[0][1])]
    got = sent_tokens(loaded["codellama"], InfillPrompt(PREFIX, SUFFIX, typed=TYPED, extra=EXTRA, repository=True))
    assert got == [1, *chunks, *expected[1:]]


def test_infill_budget_keeps_the_end_of_the_prefix_and_the_start_of_the_suffix(loaded, fim_models):
    v = LlamaCppVocab(fim_models["qwen"])
    prefix, suffix = "".join(f"x{i} = {i}\n" for i in range(200)), "".join(f"y{i} = {i}\n" for i in range(200))
    budget = InfillBudget(n_ctx=512, batch=256, reply=16)
    layout = infill_tokens(loaded["qwen"], prefix, suffix, extra=EXTRA, repository=True, budget=budget)
    before, after = v.text(prefix), v.text(suffix)
    f = v.fim
    tokens = layout.tokens
    assert layout.truncated
    pre, suf, mid = tokens.index(f["pre"]), tokens.index(f["suf"]), tokens.index(f["mid"])
    assert tokens[pre + 1:suf] == before[-192:]  # 3/4 of the batch, from the end
    assert tokens[suf + 1:mid] == after[:62]  # 1/4 of the batch less the two markers
    assert len(tokens) <= 512 - 16


def test_openai_and_ollama_suffix_end_to_end(http, loaded):
    expected = sent_tokens(loaded["qwen"], InfillPrompt(PREFIX + TYPED, SUFFIX))
    r = http.post("/v1/completions", json={"model": "qwen", "prompt": PREFIX + TYPED, "suffix": SUFFIX,
                                           "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(expected)
    r = http.post("/api/generate", json={"model": "qwen", "prompt": PREFIX + TYPED, "suffix": SUFFIX, "stream": False,
                                         "options": {"num_predict": 4, "temperature": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] == len(expected)


def test_infill_with_extra_context_and_prefix_reuse_while_typing(http, loaded):
    def infill(typed, **more):
        body = {"model": "qwen", "input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": typed,
                "input_extra": [{"filename": n, "text": t} for n, t in EXTRA], "n_predict": 4, "temperature": 0,
                "cache_prompt": True, **more}
        r = http.post("/infill", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    warm = infill("", n_predict=0)  # llama.vim's warm-up: fill the cache, generate nothing
    assert warm["tokens_predicted"] == 0 and warm["content"] == ""
    first = infill("    ret")
    expected = sent_tokens(loaded["qwen"], InfillPrompt(PREFIX, SUFFIX, typed="    ret", extra=EXTRA, repository=True))
    assert first["tokens_evaluated"] == len(expected)
    assert first["timings"]["cache_n"] > 0  # the context chunks were warm
    second = infill("    return a")
    n_prompt = second["tokens_evaluated"]
    assert second["timings"]["cache_n"] > n_prompt // 2  # all but the edited end is reused
    assert second["timings"]["prompt_n"] == n_prompt - second["timings"]["cache_n"]
    assert second["stop"] is True and second["truncated"] is False


def test_infill_response_fields_and_stream(http):
    fields = ["content", "timings/prompt_n", "timings/predicted_n", "truncated", "tokens_cached", "nope/none"]
    r = http.post("/infill", json={"model": "qwen", "input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 3,
                                   "temperature": 0, "response_fields": fields})
    assert r.status_code == 200 and set(r.json()) == set(fields) - {"nope/none"}
    assert r.json()["timings/predicted_n"] <= 3
    with http.stream("POST", "/infill", json={"model": "qwen", "input_prefix": PREFIX, "input_suffix": SUFFIX,
                                               "n_predict": 3, "temperature": 0, "stream": True}) as s:
        events = [line for line in s.iter_lines() if line]
    assert all(e.startswith("data: {") for e in events) and not any("[DONE]" in e for e in events)
    assert '"stop": true' in events[-1] and "timings" in events[-1]


def test_a_model_without_fim_tokens_is_refused_in_each_shape(http):
    r = http.post("/infill", json={"model": "stories", "input_prefix": "a", "input_suffix": "b"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 400 and "fill-in-the-middle" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": "stories", "prompt": "a", "suffix": "b"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "fim_unsupported"
    r = http.post("/api/generate", json={"model": "stories", "prompt": "a", "suffix": "b", "stream": False})
    assert r.status_code == 400 and "fill-in-the-middle" in r.json()["error"]
