"""The report's sessions: the most recently touched in memory, the others on disk.

A report keeps one session per DCE/RPC connection that carried WMI, each with up to
1,000 call rows and every sealed call's view, until the output is written: thousands of
connections in a large capture (9,341 in 1 GB of sealed traffic) held half a gigabyte.
A connection's calls come close together, so most sessions are never touched again once
their connection is done: the store keeps the `live` most recently touched ones in memory
and pickles the others into a temporary SQLite database (sqlite3 of the standard library,
opened on "": a private file that SQLite deletes when the store closes or the process
ends, also after an error). A session touched again is read back; the output reads them
one at a time in the order it writes them.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections import OrderedDict
from typing import Iterator

# Sessions held in memory: each costs up to a few hundred KB (1,000 call rows); a few
# hundred cover the connections open at once in the captures seen.
LIVE_SESSIONS = 256


class SessionStore:
    """Sessions by id, in the order they were first seen (as a dict keeps them)."""

    def __init__(self, live: int = LIVE_SESSIONS):
        self.live = max(1, live)
        self.order: list[str] = []
        self._held: OrderedDict[str, dict] = OrderedDict()
        self._spilled: set[str] = set()
        self._db: sqlite3.Connection | None = None

    def __len__(self) -> int:
        return len(self.order)

    def get(self, sid: str) -> dict | None:
        """The session to change: held again (read back from disk if it was spilled)."""
        s = self._held.get(sid)
        if s is not None:
            self._held.move_to_end(sid)
            return s
        if sid not in self._spilled:
            return None
        s = self._read(sid)
        self._hold(sid, s)
        return s

    def add(self, sid: str, s: dict) -> None:
        self.order.append(sid)
        self._hold(sid, s)

    def read(self, sid: str) -> dict:
        """The session to read (not to change): not held again, so reading every session
        for the output does not spill and reread the ones in memory."""
        s = self._held.get(sid)
        return s if s is not None else self._read(sid)

    def values(self) -> Iterator[dict]:
        for sid in self.order:
            yield self.read(sid)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _hold(self, sid: str, s: dict) -> None:
        self._held[sid] = s
        if len(self._held) > self.live:
            old, s = self._held.popitem(last=False)
            if self._db is None:
                self._db = sqlite3.connect("")
                self._db.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, data BLOB)")
            self._db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)",
                             (old, pickle.dumps(s, pickle.HIGHEST_PROTOCOL)))
            self._spilled.add(old)

    def _read(self, sid: str) -> dict:
        (data,) = self._db.execute("SELECT data FROM sessions WHERE id = ?", (sid,)).fetchone()
        return pickle.loads(data)
