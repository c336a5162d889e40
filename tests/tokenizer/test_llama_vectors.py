"""llama.cpp's own tokenizer test vectors (`ggml-vocab-llama-spm.gguf.inp/.out`) through the
GGUF-vocabulary tokenizer and through SentencePiece's `tokenizer.model` alike.

llama.cpp's tests/test-tokenizer-0.cpp reads the texts separated by
"\\n__ggml_vocab_test__\\n" and checks `common_tokenize(ctx, text, add_special=false,
parse_special=false)` against each .out line: no BOS, control tokens not parsed. We encode
the same way: `encode(text, add_bos=False, special=False)`.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_model

SEPARATOR = "\n__ggml_vocab_test__\n"


def read_vectors() -> list[tuple[str, list[int]]]:
    base = require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf")
    raw = base.with_name(base.name + ".inp").read_text(encoding="utf-8")
    texts: list[str] = []
    pos = 0
    while pos < len(raw):  # the same split as test-tokenizer-0.cpp
        end = raw.find(SEPARATOR, pos)
        if end < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:end])
        pos = end + len(SEPARATOR)
    lines = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    expected = [[int(x) for x in line.split()] for line in lines]
    assert len(texts) == len(expected) == 46
    return list(zip(texts, expected))


@pytest.fixture(scope="module")
def vectors():
    return read_vectors()


@pytest.fixture(params=["gguf", "sentencepiece"])
def tokenizer(request, llama_gguf_vocab, llama_sentencepiece):
    return {"gguf": llama_gguf_vocab, "sentencepiece": llama_sentencepiece}[request.param]


def test_vectors_encode_to_the_expected_ids(tokenizer, vectors):
    failures = [(text, tokenizer.encode(text, add_bos=False), ids) for text, ids in vectors
                if tokenizer.encode(text, add_bos=False) != ids]
    assert not failures, failures[:3]


def test_vectors_round_trip(tokenizer, vectors):
    failures = [text for text, _ in vectors if tokenizer.decode(tokenizer.encode(text, add_bos=False)) != text]
    assert not failures
    # With BOS too: the control token decodes to nothing.
    assert all(tokenizer.decode(tokenizer.encode(text)) == text for text, _ in vectors)


def test_both_implementations_agree_on_every_piece(llama_gguf_vocab, llama_sentencepiece):
    gguf, sp = llama_gguf_vocab, llama_sentencepiece
    assert gguf.vocab_size == sp.vocab_size == 32000
    assert all(gguf.token_bytes(t) == sp.token_bytes(t) for t in range(gguf.vocab_size))
    assert all(gguf.token_text(t) == sp.token_text(t) for t in range(gguf.vocab_size))
    assert gguf.token_bytes(13) == b"\n"  # byte-fallback <0x0A>
    assert gguf.token_bytes(1) == b""  # control: <s>


def test_special_tokens_and_bos(llama_gguf_vocab, llama_sentencepiece):
    for tok in (llama_gguf_vocab, llama_sentencepiece):
        assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)
        assert dict(tok.special_tokens) == {"<s>": 1, "</s>": 2}
        assert tok.end_of_turn_ids == frozenset({2})
        assert tok.is_control(1) and tok.is_control(2) and not tok.is_control(15043)
        assert tok.encode("Hello") == [1, 15043]
        assert tok.encode("Hello", add_bos=False) == [15043]


def test_typed_control_text_stays_plain_unless_special(llama_gguf_vocab, llama_sentencepiece):
    text = "<s>Hello</s> world"
    for tok in (llama_gguf_vocab, llama_sentencepiece):
        plain = tok.encode(text, add_bos=False)
        assert 1 not in plain and 2 not in plain
        assert tok.decode(plain) == text
        assert tok.encode(text, add_bos=False, special=True) == [1, 15043, 2, 29871, 3186]
    assert llama_gguf_vocab.decode([1, 15043, 2], special=True) == "<s>Hello</s>"
    assert llama_sentencepiece.decode([1, 15043, 2], special=True) == "<s>Hello</s>"


def test_load_tokenizer_picks_by_file_kind(tmp_path):
    from localllm.errors import ModelFileError
    from localllm.tokenizer import load_tokenizer

    gguf = load_tokenizer(require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf"))
    assert type(gguf).__name__ == "LlamaCppVocabulary"
    sp = load_tokenizer(require_model("llama2-tokenizer/tokenizer.model"))
    assert type(sp).__name__ == "SentencePieceTokenizer"
    folder = require_model("llama2-tokenizer")
    assert type(load_tokenizer(folder)).__name__ == "SentencePieceTokenizer"
    stories = load_tokenizer(require_model("stories260K/tok512.model"))
    assert stories.vocab_size == 512 and stories.chat_template is None
    with pytest.raises(ModelFileError, match="no such file"):
        load_tokenizer(tmp_path / "missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unknown tokenizer file kind"):
        load_tokenizer(tmp_path / "weights.bin")
    with pytest.raises(ModelFileError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelFileError, match="not a GGUF"):
        load_tokenizer(not_gguf)


def test_stories_vocab_matches_its_sentencepiece_model():
    from localllm.tokenizer import load_tokenizer

    gguf = load_tokenizer(require_model("stories260K/stories260K.gguf"))
    sp = load_tokenizer(require_model("stories260K/tok512.model"))
    text = "Once upon a time, there was a little girl named Lily. She liked to play!"
    assert gguf.encode(text) == sp.encode(text)
    assert gguf.decode(gguf.encode(text)) == sp.decode(sp.encode(text)) == text
    assert gguf.chat_template is None
