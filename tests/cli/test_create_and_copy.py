"""`localllm create -f Modelfile`, `cp` and `show --modelfile` through the real CLI: a
created model's PARAMETERs, SYSTEM and TEMPLATE give the same greedy reply as the same
settings passed by flags, and flags override them."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

# A Jinja chat template small enough to read: system, then turns, then the cue.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
SYSTEM = "Lily tells stories about her cat."


@pytest.fixture(autouse=True)
def _home(isolated_home):
    return isolated_home


@pytest.fixture
def modelfile(tmp_path, stories_path):
    folder = tmp_path / "teller"
    folder.mkdir()
    (folder / "stories.gguf").symlink_to(stories_path)
    path = folder / "Modelfile"
    path.write_text(
        "# a storyteller\n"
        "FROM ./stories.gguf\n"
        "PARAMETER temperature 0\n"
        "PARAMETER num_predict 14\n"
        "PARAMETER stop \"zebra\"\n"
        f"SYSTEM {SYSTEM}\n"
        f'TEMPLATE """{TEMPLATE}"""\n'
        "LICENSE MIT, as stories260K\n"
    )
    return path


def test_created_model_replies_as_the_same_flags_do(modelfile, stories_path, tmp_path):
    created = run_cli("create", "teller", "-f", str(modelfile))
    assert created.returncode == 0, created.stderr
    assert "created teller:latest" in created.stdout
    template_file = tmp_path / "template.jinja"
    template_file.write_text(TEMPLATE)
    common = ("--threads", "1", "--stats", "json")
    by_model = run_cli("run", "teller", "Once upon a time", *common)
    by_flags = run_cli("run", str(stories_path), "Once upon a time", "--temperature", "0", "--max-tokens", "14",
                       "--stop", "zebra", "--system", SYSTEM, "--chat-template", str(template_file), *common)
    assert by_model.returncode == 0 and by_flags.returncode == 0, (by_model.stderr, by_flags.stderr)
    assert by_model.stdout == by_flags.stdout and by_model.stdout.strip()
    assert json.loads(by_model.stderr.splitlines()[-1])["generated_tokens"] == 14
    # Flags win over the model's parameters.
    shorter = run_cli("run", "teller", "Once upon a time", "--max-tokens", "3", *common)
    assert json.loads(shorter.stderr.splitlines()[-1])["generated_tokens"] == 3
    assert by_model.stdout.startswith(shorter.stdout.rstrip("\n"))


def test_show_modelfile_round_trips_and_cp_shares_the_model(modelfile, tmp_path):
    assert run_cli("create", "teller", "-f", str(modelfile)).returncode == 0
    shown = run_cli("show", "teller", "--modelfile")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "PARAMETER temperature 0" in text and 'PARAMETER stop "zebra"' in text
    assert f'SYSTEM """{SYSTEM}"""' in text and TEMPLATE in text and "MIT, as stories260K" in text
    again = tmp_path / "Modelfile.again"
    again.write_text(text)
    assert run_cli("create", "teller2", "-f", str(again)).returncode == 0
    assert run_cli("show", "teller2", "--modelfile").stdout == text

    copied = run_cli("cp", "teller", "fable")
    assert copied.returncode == 0 and "fable:latest" in copied.stdout
    listed = {m["name"]: m for m in json.loads(run_cli("list", "--json").stdout)}
    assert {"teller:latest", "teller2:latest", "fable:latest"} <= set(listed)
    assert listed["fable:latest"]["digest"] == listed["teller:latest"]["digest"]  # the same blob
    params = run_cli("show", "fable", "--parameters").stdout
    assert "temperature" in params and '"zebra"' in params

    over = run_cli("cp", "teller2", "fable")  # the same model: nothing to say
    assert over.returncode == 0 and "named another model" not in over.stderr
    (tmp_path / "Modelfile.hot").write_text("FROM teller\nPARAMETER temperature 1.5\n")
    assert run_cli("create", "fable", "-f", str(tmp_path / "Modelfile.hot")).returncode == 0
    replaced = run_cli("cp", "teller", "fable")
    assert "fable:latest named another model before" in replaced.stderr


@pytest.mark.parametrize("text, needle", [
    ("FROM x\nADAPTER ./lora.gguf\n", "ADAPTER is not supported"),
    ("PARAMETER temperature 0\n", "has no FROM line"),
    ("FROM x\nPARAMETER mirostat 2\n", "not a parameter localllm uses"),
    ("FROM x\nPARAMETER temperature warm\n", "must be a number"),
    ("FROM x\nTEMPLATE \"\"\"{{ .System }} {{ .Prompt }}\"\"\"\n", "Go template syntax"),
    ("FROM x\nMESSAGE robot hi\n", "MESSAGE role 'robot'"),
    ("FROM ./missing.gguf\n", "no such file or folder"),
    ("FROM nothing-like-it\n", "unknown model 'nothing-like-it'"),
])
def test_bad_modelfiles_are_one_clear_line(tmp_path, text, needle):
    path = tmp_path / "Modelfile"
    path.write_text(text)
    r = run_cli("create", "bad", "-f", str(path))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("localllm: error: ") and needle in lines[0], r.stderr


def test_create_without_a_modelfile_says_how(tmp_path):
    r = run_cli("create", "x", "-f", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no Modelfile at" in r.stderr
