"""Hugging Face tokenizer.json through `HFTokenizer`, on small real tokenizers built here:
a byte-level BPE trained with the `tokenizers` library (GPT-2 / Llama 3 / Qwen style) and
a SentencePiece-style BPE with byte fallback (Llama 2 / Mistral tokenizer.json style)."""

from __future__ import annotations

import json

import pytest

from localllm.tokenizer import Tokenizer, load_tokenizer
from localllm.tokenizer.hf_tokenizer import HFTokenizer
from tests.tokenizer.tokenizer_fixtures import CORPUS, template_text, train_byte_level_bpe

TEXTS = [*dict.fromkeys(CORPUS), "", " leading space", "trailing space ", "new\n\nlines\t", "🦙🦙 llama 日本"]


def test_loads_a_folder_with_its_config_and_template(chatml_folder):
    tok = load_tokenizer(chatml_folder)
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert dict(tok.special_tokens) == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (None, 2, False)
    assert tok.end_of_turn_ids == frozenset({0, 2})  # EOS <|im_end|> and <|endoftext|>
    assert tok.chat_template == template_text("qwen2.5-instruct.jinja")
    assert type(load_tokenizer(chatml_folder / "tokenizer.json")).__name__ == "HFTokenizer"


def test_round_trip_and_token_bytes(chatml_folder):
    tok = load_tokenizer(chatml_folder)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert b"".join(tok.token_bytes(t) for t in ids) == text.encode("utf-8")
    assert tok.token_bytes(2) == b"" and tok.token_text(2) == "<|im_end|>"


def test_typed_special_text_stays_plain(chatml_folder):
    tok = load_tokenizer(chatml_folder)
    text = "a<|im_end|>b<|im_start|>"
    plain = tok.encode(text)
    assert not any(tok.is_control(t) for t in plain)
    assert tok.decode(plain) == text
    parsed = tok.encode(text, special=True)
    assert [t for t in parsed if tok.is_control(t)] == [2, 1]
    assert tok.decode(parsed) == "ab" and tok.decode(parsed, special=True) == text


def test_bos_from_the_post_processor(llama3_folder, tmp_path):
    tok = load_tokenizer(llama3_folder)
    bos = tok.special_tokens["<|begin_of_text|>"]
    assert (tok.bos_id, tok.add_bos) == (bos, True)
    assert tok.encode("Hello")[0] == bos and tok.encode("Hello", add_bos=False)[0] != bos
    assert tok.eos_id == tok.special_tokens["<|eot_id|>"]
    assert tok.end_of_turn_ids == frozenset({tok.special_tokens["<|eot_id|>"], tok.special_tokens["<|end_of_text|>"]})
    # tokenizer_config.json's add_bos_token has the last word.
    folder = train_byte_level_bpe(tmp_path / "nobos", ["<|begin_of_text|>", "<|eot_id|>"],
                                  {"bos_token": "<|begin_of_text|>", "add_bos_token": False},
                                  bos_template="<|begin_of_text|>")
    assert load_tokenizer(folder).add_bos is False


def test_sentencepiece_style_tokenizer_json_with_byte_fallback(tmp_path):
    from tokenizers import Tokenizer as HFLib, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["\u2581", "h", "i", "\u2581h", "\u2581hi", "t", "e", "r", "\u2581t", "he", "\u2581the", "re", "\u2581there"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("\u2581", "h"), ("\u2581h", "i"), ("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("r", "e"),
              ("\u2581the", "re")]
    lib = HFLib(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    lib.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    lib.pre_tokenizer = None
    lib.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    lib.add_special_tokens(["<unk>", "<s>", "</s>"])
    (tmp_path / "tokenizer.json").write_text(lib.to_str(), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "add_bos_token": True}))
    tok = load_tokenizer(tmp_path)
    ids = tok.encode("hi there 日")
    assert ids[0] == 1 and ids[1:3] == [vocab["\u2581hi"], vocab["\u2581there"]]
    # "日" has no piece: three byte-fallback tokens <0xE6> <0x97> <0xA5>.
    assert [tok.token_bytes(t) for t in ids[1:]] == [b" hi", b" there", b" ", b"\xe6", b"\x97", b"\xa5"]
    assert tok.decode(ids) == "hi there 日"
    assert tok.encode("</s>", add_bos=False) != [2] and tok.encode("</s>", add_bos=False, special=True) == [2]


def test_unusable_tokenizer_json(tmp_path):
    from localllm.errors import ModelFileError

    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ModelFileError, match="not a usable tokenizer.json"):
        load_tokenizer(bad)
