"""Compare grammar libraries for constrained decoding: llguidance, xgrammar, outlines-core.

Not part of the app: run it once per library, each in its own scratch virtual environment
(xgrammar pulls in torch, several GB), then read the tables side by side:

    python3 -m venv /tmp/v-llg && /tmp/v-llg/bin/pip install llguidance numpy jsonschema
    /tmp/v-llg/bin/python benchmarks/compare_grammar_libraries.py llguidance VOCAB.json

VOCAB.json holds a model's token bytes ({"eos": id, "tokens": [{"hex", "control"}...]});
`--dump-vocab GGUF OUT.json` (run in the project's venv) writes it from a GGUF. The 262k
vocabulary is the model's own plus synthetic tokens (pairs of its pieces and runs of CJK
characters, the shape of Gemma 3's vocabulary) up to 262,144.

Per schema it reports the compile time and the per-token time (mask + advance) while
walking a valid instance's tokens, median over the walk; then for each schema feature
whether a valid instance is accepted and an invalid one refused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
            "age": {"type": "integer"},
        },
        "required": ["name", "address", "age"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "status": {"enum": ["open", "closed", "pending"]},
            "priority": {"type": "integer", "enum": [1, 2, 3]},
            "kind": {"const": "ticket"},
        },
        "required": ["status", "priority", "kind"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
                       "minItems": 2, "maxItems": 4},
        },
        "required": ["tags", "scores"],
        "additionalProperties": False,
    },
}

INSTANCES = {
    "nested": '{"name": "Alice Smith", "address": {"city": "Paris", "zip": "75001"}, "age": 30}',
    "enums": '{"status": "pending", "priority": 2, "kind": "ticket"}',
    "arrays": '{"tags": ["red", "green"], "scores": [10, 20, 99]}',
}

# feature: (schema, valid instance, invalid instance)
FEATURES = {
    "pattern": ({"type": "string", "pattern": "^[a-z]{3}-[0-9]{2}$"}, '"abc-12"', '"abcd-1"'),
    "minLength/maxLength": ({"type": "string", "minLength": 2, "maxLength": 4}, '"abc"', '"abcdef"'),
    "minimum/maximum": ({"type": "integer", "minimum": 5, "maximum": 50}, "42", "420"),
    "min/maxItems": ({"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "[1, 2]", "[1, 2, 3]"),
    "enum": ({"enum": ["a", "b"]}, '"b"', '"c"'),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, '"x"', "true"),
    "oneOf": ({"oneOf": [{"type": "integer"}, {"type": "boolean"}]}, "true", '"x"'),
    "$ref recursion": ({"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}},
                                        "additionalProperties": False}}, "$ref": "#/$defs/n"},
                       '{"c": {"c": {}}}', '{"c": {"d": 1}}'),
    "additionalProperties false": ({"type": "object", "properties": {"a": {"type": "integer"}},
                                    "additionalProperties": False}, '{"a": 1}', '{"b": 1}'),
    "format date-time": ({"type": "string", "format": "date-time"}, '"2024-01-02T03:04:05Z"', '"yesterday"'),
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 2]", "[1, 1]"),
}


def load_vocab(path: str, size: int | None) -> tuple[list[bytes], int, set[int]]:
    data = json.load(open(path))
    tokens = [bytes.fromhex(t["hex"]) for t in data["tokens"]]
    control = {i for i, t in enumerate(data["tokens"]) if t["control"]}
    if size and size > len(tokens):
        rng = np.random.default_rng(0)
        seen = set(tokens)
        plain = [t for i, t in enumerate(tokens) if i not in control and t]
        while len(tokens) < size:
            if rng.random() < 0.5:
                t = plain[rng.integers(len(plain))] + plain[rng.integers(len(plain))]
            else:
                t = "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 20000, rng.integers(1, 4))).encode()
            if t not in seen:
                seen.add(t)
                tokens.append(t)
    return tokens, data["eos"], control


_TABLES: dict[int, tuple[dict[bytes, int], int]] = {}


def encode_greedy(tokens: list[bytes], text: str | bytes, control: set[int]) -> list[int]:
    """Longest-match tokenization over the model's own pieces (a valid, not canonical, split)."""
    if id(tokens) not in _TABLES:
        table = {t: i for i, t in enumerate(tokens) if t and i not in control and i < 49152}
        _TABLES[id(tokens)] = table, max(len(t) for t in table)
    table, longest = _TABLES[id(tokens)]
    data, out, i = text.encode() if isinstance(text, str) else text, [], 0
    while i < len(data):
        for n in range(min(longest, len(data) - i), 0, -1):
            if data[i:i + n] in table:
                out.append(table[data[i:i + n]])
                i += n
                break
        else:
            raise ValueError(f"no token for byte {data[i]}")
    return out


class LLGuidance:
    def __init__(self, tokens, eos, control):
        import llguidance
        import llguidance.numpy as llnp
        self.lg, self.llnp = llguidance, llnp
        wrapped = [(b"\xff" + b"<c%d>" % i) if i in control else t for i, t in enumerate(tokens)]

        class Tok:
            eos_token_id, bos_token_id = eos, None
            special_token_ids = sorted(control)

            def __init__(self):
                self.tokens = wrapped

            def __call__(self, s):
                return encode_greedy(tokens, s, control)

        self.tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Tok()))
        self.mask = llnp.allocate_token_bitmask(1, len(tokens))

    def compile(self, schema):
        g = self.lg.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        m = self.lg.LLMatcher(self.tok, g)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def step(self, m, token) -> bool:
        self.llnp.fill_next_token_bitmask(m, self.mask)
        allowed = bool((self.mask[0, token >> 5] >> (token & 31)) & 1)
        return allowed and m.consume_token(token)

    def accepting(self, m):
        return m.is_accepting()


class XGrammar:
    def __init__(self, tokens, eos, control):
        import xgrammar as xgr
        self.xgr = xgr
        info = xgr.TokenizerInfo([b"" if i in control else t for i, t in enumerate(tokens)],
                                 xgr.VocabType.RAW, vocab_size=len(tokens), stop_token_ids=[eos])
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.mask = xgr.allocate_token_bitmask(1, len(tokens))
        self.np_mask = self.mask.numpy()

    def compile(self, schema):
        return self.xgr.GrammarMatcher(self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))

    def step(self, m, token) -> bool:
        m.fill_next_token_bitmask(self.mask)
        allowed = bool((int(self.np_mask[0, token >> 5]) >> (token & 31)) & 1)
        return allowed and m.accept_token(token)

    def accepting(self, m):
        return m.is_completed() or m.accept_token(m.stop_token_ids[0])


class OutlinesCore:
    def __init__(self, tokens, eos, control):
        import outlines_core as oc
        self.oc = oc
        table: dict[bytes, list[int]] = {}
        for i, t in enumerate(tokens):
            if i not in control and t and i != eos:
                table.setdefault(t, []).append(i)
        self.vocab = oc.Vocabulary(eos, table)
        self.mask = np.zeros((len(tokens) + 31) // 32, dtype=np.int32)

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema))
        return self.oc.Guide(self.oc.Index(regex, self.vocab))

    def step(self, g, token) -> bool:
        g.write_mask_into(self.mask.ctypes.data, self.mask.size, 4)
        allowed = bool((int(self.mask[token >> 5]) >> (token & 31)) & 1)
        if not allowed:
            return False
        g.advance(token)
        return True

    def accepting(self, g):
        return g.is_finished() or self.vocab.get_eos_token_id() in g.get_tokens()


LIBRARIES = {"llguidance": LLGuidance, "xgrammar": XGrammar, "outlines-core": OutlinesCore}


def walk(lib, matcher, ids) -> bool:
    """Feed `ids`; True when every token was allowed and the grammar may end there."""
    for t in ids:
        if not lib.step(matcher, t):
            return False
    return lib.accepting(matcher)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("library", nargs="?", choices=sorted(LIBRARIES))
    ap.add_argument("vocab", nargs="?")
    ap.add_argument("--dump-vocab", nargs=2, metavar=("GGUF", "OUT"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.dump_vocab:
        from localllm.cpu_backend.vocab import LlamaCppVocabulary
        v = LlamaCppVocabulary.from_file(args.dump_vocab[0])
        toks = [{"hex": v.token_bytes(i).hex(), "control": v.is_control(i)} for i in range(v.vocab_size)]
        json.dump({"eos": v.eos_id, "tokens": toks}, open(args.dump_vocab[1], "w"))
        return 0
    if not (args.library and args.vocab):
        ap.error("give a library and a vocabulary file")
    print("| library | vocab | schema | tokenizer init ms | compile ms | per-token us median | mean | max |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in (None, 262144):
        tokens, eos, control = load_vocab(args.vocab, size)
        t0 = time.perf_counter()
        lib = LIBRARIES[args.library](tokens, eos, control)
        init_ms = (time.perf_counter() - t0) * 1e3
        for name, schema in SCHEMAS.items():
            ids = encode_greedy(tokens, INSTANCES[name], control)
            compile_ms, per_token, mean_us, max_us = [], [], [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                m = lib.compile(schema)
                compile_ms.append((time.perf_counter() - t0) * 1e3)
                steps = []
                for t in ids:
                    t0 = time.perf_counter()
                    ok = lib.step(m, t)
                    steps.append(time.perf_counter() - t0)
                    assert ok, f"{args.library} refused a token of the valid {name} instance"
                per_token.append(statistics.median(steps) * 1e6)
                mean_us.append(statistics.mean(steps) * 1e6)
                max_us.append(max(steps) * 1e6)
            print(f"| {args.library} | {len(tokens)} | {name} | {init_ms:.0f} | "
                  f"{statistics.median(compile_ms):.1f} | {statistics.median(per_token):.1f} | "
                  f"{statistics.median(mean_us):.1f} | {statistics.median(max_us):.0f} |")
        if size is None:
            feats = []
            for feat, (schema, good, bad) in FEATURES.items():
                try:
                    ok_good = walk(lib, lib.compile(schema), encode_greedy(tokens, good, control))
                    ok_bad = not walk(lib, lib.compile(schema), encode_greedy(tokens, bad, control))
                    feats.append(f"{feat}: {'yes' if ok_good and ok_bad else 'accepts invalid' if ok_good else 'refuses valid'}")
                except Exception as e:  # a library that refuses to compile a feature
                    feats.append(f"{feat}: error ({str(e).splitlines()[0][:60]})")
            print("features:", "; ".join(feats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
