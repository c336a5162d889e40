"""Conversations on disk: one SQLite database (WAL) in the user data folder.

`ConversationStore` owns the schema and every query the chat app makes. A reply is
written as it streams (the app updates its row at each finished line), so a crash loses
at most the line being written; a row left in state 'streaming' was cut short that way.
The store is used from the UI thread only; worker threads never touch it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from localllm.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'done',
    model TEXT NOT NULL DEFAULT '',
    stats TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE IF NOT EXISTS prefs (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

NEW_TITLE = "New chat"


@dataclass(frozen=True)
class ConversationSettings:
    """Per-conversation generation settings. `ctx_size` 0 means the app's default;
    `max_tokens` 0 means until the model stops or the context is full; `overflow` is
    what a chat too long for the context does ("refuse" or "drop-oldest"; "" means the
    app's setting). `speculative`: draft tokens by prompt lookup and verify them (the
    same text, sooner where the reply repeats the context); off decodes one token a step."""

    system_prompt: str = ""
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 0
    ctx_size: int = 0
    speculative: bool = True
    overflow: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ConversationSettings":
        try:
            data = json.loads(text or "{}")
        except json.JSONDecodeError:
            data = {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: str = ""
    settings: ConversationSettings = field(default_factory=ConversationSettings)
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: str
    content: str
    state: str = "done"  # done | streaming | cancelled | error
    model: str = ""
    stats: dict = field(default_factory=dict)


def _is_damage(e: sqlite3.DatabaseError) -> bool:
    """A file that is not a database, or a malformed one (as opposed to one SQLite may
    not write, or cannot open at all)."""
    if isinstance(e, sqlite3.OperationalError):
        return False  # read-only, locked, unable to open, disk full: nothing is damaged
    return True


def _unwritable(path: Path, e: BaseException) -> UserError:
    return UserError(f"cannot use the conversations database {path} ({_one_line(e)}): check that it and its "
                     "folder are writable and the disk has room, or set LOCALLLM_HOME to another folder")


def _one_line(e: BaseException) -> str:
    return " ".join(str(getattr(e, "strerror", None) or e).split())


def title_from(text: str, limit: int = 40) -> str:
    """A conversation title from its first prompt: the first line, shortened."""
    line = " ".join(text.strip().split("\n", 1)[0].split())
    if not line:
        return NEW_TITLE
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


class ConversationStore:
    """All conversations of one user. Call `close()` when done.

    A damaged database (not SQLite, or failing SQLite's quick check) is moved aside,
    kept under a `.damaged-<time>` name, and a fresh one started; `recovery_notice` then
    says where the old one went. One that cannot be written (read-only, a full disk) is
    a `UserError` saying so: nothing is moved or lost."""

    def __init__(self, path: Path, clock=time.time):
        self.path = path
        self._clock = clock
        self.recovery_notice: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open(path)
        except sqlite3.DatabaseError as e:
            if not _is_damage(e):
                raise _unwritable(path, e) from None
            aside = self._move_aside(path)
            self.recovery_notice = (f"the conversations database was damaged ({_one_line(e)}): it is kept as "
                                    f"{aside.name} and a new one was started")
            try:
                self._db = self._open(path)
            except sqlite3.DatabaseError as again:
                raise _unwritable(path, again) from None
        except OSError as e:
            raise _unwritable(path, e) from None

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL survives an application crash; only power loss may drop the
            # last transactions, which is the usual trade for not fsyncing every line.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            db.executescript(SCHEMA)
            # One real write now, so a read-only database is an error here, not at the first
            # message of a chat.
            db.execute("INSERT OR REPLACE INTO prefs(key, value) VALUES ('opened', ?)", (str(time.time()),))
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, path: Path) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        try:
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):  # the damaged file's journal goes with it
                side = path.with_name(path.name + suffix)
                if side.exists():
                    os.replace(side, aside.with_name(aside.name + suffix))
        except OSError as e:
            raise _unwritable(path, e) from None
        return aside

    @classmethod
    def in_home(cls, home: Path) -> "ConversationStore":
        return cls(Path(home) / "conversations.sqlite3")

    def close(self) -> None:
        self._db.close()

    @property
    def journal_mode(self) -> str:
        return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    # conversations

    def create(self, model: str = "", settings: ConversationSettings | None = None, title: str = NEW_TITLE) -> Conversation:
        now = self._clock()
        settings = settings or ConversationSettings()
        cur = self._db.execute(
            "INSERT INTO conversations(title, model, settings, created, updated) VALUES (?, ?, ?, ?, ?)",
            (title, model, settings.to_json(), now, now),
        )
        return Conversation(cur.lastrowid, title, model, settings, now, now)

    def get(self, conversation_id: int) -> Conversation | None:
        row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return self._conversation(row) if row else None

    def list(self, search: str = "") -> list[Conversation]:
        """Newest first; `search` matches titles and message text, case-insensitively."""
        if not search.strip():
            rows = self._db.execute("SELECT * FROM conversations ORDER BY updated DESC, id DESC").fetchall()
        else:
            pattern = "%" + search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._db.execute(
                "SELECT * FROM conversations c WHERE c.title LIKE ?1 ESCAPE '\\' OR EXISTS ("
                " SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ?1 ESCAPE '\\')"
                " ORDER BY updated DESC, id DESC",
                (pattern,),
            ).fetchall()
        return [self._conversation(r) for r in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        self._db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title.strip() or NEW_TITLE, conversation_id))

    def delete(self, conversation_id: int) -> None:
        self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def set_settings(self, conversation_id: int, settings: ConversationSettings) -> None:
        self._db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (settings.to_json(), conversation_id))

    def set_model(self, conversation_id: int, model: str) -> None:
        self._db.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id))

    def touch(self, conversation_id: int) -> None:
        self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (self._clock(), conversation_id))

    # messages

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        ).fetchall()
        return [self._message(r) for r in rows]

    def add_message(self, conversation_id: int, role: str, content: str, state: str = "done", model: str = "") -> StoredMessage:
        now = self._clock()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO messages(conversation_id, role, content, state, model, created) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, state, model, now),
            )
            self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            if role == "user":
                self._db.execute(
                    "UPDATE conversations SET title = ? WHERE id = ? AND title = ?",
                    (title_from(content), conversation_id, NEW_TITLE),
                )
        return StoredMessage(cur.lastrowid, conversation_id, role, content, state, model)

    def update_message(self, message_id: int, content: str, state: str | None = None, stats: dict | None = None) -> None:
        sets, args = ["content = ?"], [content]
        if state is not None:
            sets.append("state = ?")
            args.append(state)
        if stats is not None:
            sets.append("stats = ?")
            args.append(json.dumps(stats))
        self._db.execute(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", (*args, message_id))

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete `message_id` and every later message of the conversation."""
        self._db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?", (conversation_id, message_id))

    # preferences (theme, last conversation)

    def pref(self, key: str, default: str = "") -> str:
        row = self._db.execute("SELECT value FROM prefs WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_pref(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO prefs(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @staticmethod
    def _conversation(row: sqlite3.Row) -> Conversation:
        return Conversation(
            row["id"], row["title"], row["model"], ConversationSettings.from_json(row["settings"]),
            row["created"], row["updated"],
        )

    @staticmethod
    def _message(row: sqlite3.Row) -> StoredMessage:
        try:
            stats = json.loads(row["stats"] or "{}")
        except json.JSONDecodeError:
            stats = {}
        return StoredMessage(row["id"], row["conversation_id"], row["role"], row["content"], row["state"], row["model"], stats)
