"""`localllm run --json-schema FILE` through the real CLI on SmolLM2."""

from __future__ import annotations

import json

import jsonschema

from tests.conftest import run_cli

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def test_reply_validates_against_the_schema(smollm_path, tmp_path, isolated_home):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA))
    for seed in ("1", "2"):
        r = run_cli("run", str(smollm_path), "Describe a person.", "--json-schema", str(schema), "--temperature", "1",
                    "--seed", seed, "--threads", "1", "--max-tokens", "100")
        assert r.returncode == 0, r.stderr
        jsonschema.validate(json.loads(r.stdout), SCHEMA)


def test_bad_schema_files_are_one_line_and_exit_2(smollm_path, tmp_path, isolated_home):
    cases = {"missing.json": None, "notjson.json": "{nope", "list.json": "[1]",
             "unique.json": '{"type": "array", "uniqueItems": true}'}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        r = run_cli("run", str(smollm_path), "x", "--json-schema", str(path), "--threads", "1")
        assert r.returncode == 2, (name, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.startswith("localllm:")]
        assert len(lines) == 1 and "--json-schema" in lines[0] and "Traceback" not in r.stderr, r.stderr
