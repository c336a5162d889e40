"""The chat app's database when something happened to it: a file that is not SQLite or
a malformed one is moved aside (kept, named in a notice) and a fresh one started, in the
real app; one that cannot be written is a clear error, with nothing moved."""

from __future__ import annotations

import os
import sqlite3

import pytest

from localllm.errors import UserError
from localllm.tui.store import ConversationStore
from tests.tui.conftest import run, screen_text, wait_loaded, wait_for


def malformed_database(path) -> bytes:
    store = ConversationStore(path)
    for i in range(200):
        store.create(title=f"chat {i} " + "x" * 200)
    store.close()
    data = bytearray(path.read_bytes())
    data[4096:4096 * 4] = b"\x55" * (4096 * 3)  # pages past the header, overwritten
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("damage", ["garbage", "malformed", "empty header"])
def test_damaged_database_is_kept_aside_and_a_fresh_one_opens(tmp_path, damage):
    path = tmp_path / "conversations.sqlite3"
    if damage == "garbage":
        original = os.urandom(10_000)
        path.write_bytes(original)
    elif damage == "malformed":
        original = malformed_database(path)
    else:
        original = b"SQLite format 3\x00" + b"\xff" * 84
        path.write_bytes(original)
    store = ConversationStore(path)
    assert store.recovery_notice and "kept as conversations.sqlite3.damaged-" in store.recovery_notice
    kept = store.recovery_notice.split("kept as ")[1].split(" ")[0]
    store.create(title="after")
    assert [c.title for c in store.list()] == ["after"]
    store.close()
    aside = [p for p in tmp_path.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].read_bytes() == original and aside[0].name == kept
    again = ConversationStore(path)  # the fresh database reopens without a notice
    assert again.recovery_notice is None and [c.title for c in again.list()] == ["after"]
    again.close()


def test_the_app_opens_and_names_the_kept_file(make_app, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "conversations.sqlite3").write_bytes(b"this is not a database" * 100)
    app = make_app()
    notices = []

    async def scenario():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_loaded(pilot)
            await wait_for(pilot, lambda: bool(app._notifications))
            notices.extend(n.message for n in app._notifications)
            assert "stories260K" in screen_text(app)

    run(scenario())
    assert any("kept as conversations.sqlite3.damaged-" in n for n in notices), notices


def test_unwritable_database_is_a_clear_error_and_nothing_moves(tmp_path):
    home_is_a_file = tmp_path / "home"
    home_is_a_file.write_text("not a folder")
    with pytest.raises(UserError, match="cannot use the conversations database"):
        ConversationStore.in_home(home_is_a_file)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes files whatever their permissions")
def test_read_only_database_is_a_clear_error(tmp_path):
    path = tmp_path / "conversations.sqlite3"
    ConversationStore(path).close()
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(UserError, match="writable"):
            ConversationStore(path).create(title="x")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["conversations.sqlite3"]
    finally:
        tmp_path.chmod(0o755)


def test_read_only_connection_is_refused_not_moved(tmp_path, monkeypatch):
    """As root (the test machine), read-only is forced through SQLite's own flag."""
    path = tmp_path / "conversations.sqlite3"
    ConversationStore(path).close()
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda db, **kw: real_connect(f"file:{db}?mode=ro", uri=True, **kw))
    with pytest.raises(UserError, match="cannot use the conversations database"):
        ConversationStore(path)
    assert sorted(p.name for p in tmp_path.iterdir() if ".damaged" in p.name) == []
