"""The conversation store: schema, WAL, search, streaming saves, preferences."""

from __future__ import annotations

import sqlite3

from localllm.tui.store import ConversationSettings, ConversationStore, NEW_TITLE, title_from


def test_wal_and_round_trip(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    assert store.journal_mode == "wal"
    settings = ConversationSettings(system_prompt="Be brief.", temperature=0.2, top_p=0.9, max_tokens=64, ctx_size=1024, speculative=True)
    conv = store.create("stories260K", settings)
    store.add_message(conv.id, "user", "Hello there\nsecond line")
    reply = store.add_message(conv.id, "assistant", "", state="streaming", model="stories260K")
    store.update_message(reply.id, "Hi!\n")
    store.close()

    # A fresh connection (a restarted app) sees everything, the title from the first prompt.
    again = ConversationStore(tmp_path / "c.sqlite3")
    (found,) = again.list()
    assert found.title == "Hello there"
    assert found.settings == settings
    msgs = again.messages(conv.id)
    assert [(m.role, m.content, m.state) for m in msgs] == [
        ("user", "Hello there\nsecond line", "done"), ("assistant", "Hi!\n", "streaming")]


def test_search_rename_delete(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    a = store.create()
    store.add_message(a.id, "user", "tell me about 50% of cats")
    b = store.create()
    store.add_message(b.id, "user", "dogs")
    store.add_message(b.id, "assistant", "Dogs bark. Cats_meow is not a word.")
    assert [c.id for c in store.list("CATS")] == [b.id, a.id]
    assert [c.id for c in store.list("50%")] == [a.id]
    assert [c.id for c in store.list("s_m")] == [b.id]  # '_' is literal, not a wildcard
    assert store.list("s%m") == []
    store.rename(a.id, "  Feline facts ")
    assert store.get(a.id).title == "Feline facts"
    store.delete(b.id)
    assert [c.id for c in store.list()] == [a.id]
    # messages go with their conversation
    assert store._db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (b.id,)).fetchone()[0] == 0


def test_delete_from_and_stats(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    c = store.create()
    m1 = store.add_message(c.id, "user", "one")
    m2 = store.add_message(c.id, "assistant", "two")
    store.add_message(c.id, "user", "three")
    store.update_message(m2.id, "two!", state="cancelled", stats={"prompt_tokens": 3, "generated_tokens": 2})
    store.delete_messages_from(c.id, m2.id)
    (only,) = store.messages(c.id)
    assert only.id == m1.id
    m = store.add_message(c.id, "assistant", "x")
    store.update_message(m.id, "xy", stats={"generated_tokens": 2})
    assert store.messages(c.id)[-1].stats == {"generated_tokens": 2}


def test_prefs_and_titles(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    assert store.pref("theme", "dark") == "dark"
    store.set_pref("theme", "light")
    store.set_pref("theme", "textual-light")
    assert store.pref("theme") == "textual-light"
    assert title_from("  \n") == NEW_TITLE
    assert title_from("a" * 100).endswith("…") and len(title_from("a" * 100)) == 40
    assert title_from("first   line\nsecond") == "first line"


def test_settings_tolerate_unknown_and_bad_json():
    assert ConversationSettings.from_json('{"temperature": 0.1, "future_key": 1}') == ConversationSettings(temperature=0.1)
    assert ConversationSettings.from_json("not json") == ConversationSettings()


def test_wal_reader_sees_committed_lines_while_writer_is_open(tmp_path):
    """What a crash leaves: another connection reads what was saved so far."""
    store = ConversationStore(tmp_path / "c.sqlite3")
    c = store.create()
    m = store.add_message(c.id, "assistant", "", state="streaming")
    store.update_message(m.id, "line one\nline two\n")
    reader = sqlite3.connect(str(tmp_path / "c.sqlite3"))
    assert reader.execute("SELECT content, state FROM messages WHERE id = ?", (m.id,)).fetchone() == ("line one\nline two\n", "streaming")

