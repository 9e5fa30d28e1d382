"""The report's sessions and findings: the most recently touched in memory, the others on disk.

A report keeps one session per DCE/RPC connection that carried WMI (each with up to 1,000
call rows and every sealed call's view) and every finding (its reasons, frames, values
and transcript excerpt) until the output is written: 1 GB of sealed traffic has 9,341
sessions and 18,690 findings, which held half a gigabyte. A connection's calls come close
together, and a finding is completed by calls soon after the one that made it, so most
are never touched again: a store keeps the `live` most recently touched ones in memory
and pickles the others into a temporary SQLite database (sqlite3 of the standard library
opened on "": SQLite's page cache holds its first 2 MB, the rest goes to a private file in
$SQLITE_TMPDIR, $TMPDIR or /var/tmp that SQLite unlinks as soon as it opens it, so nothing
is left behind when the store closes or the process ends, also after an error or a kill). One touched again is read back; the output reads them one at
a time in the order it writes them.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections import OrderedDict
from typing import Hashable, Iterator

# Sessions held in memory: each costs up to a few hundred KB (1,000 call rows); a few
# hundred cover the connections open at once in the captures seen.
LIVE_SESSIONS = 256
# Findings held in memory: about 5 KB each, up to some 40 KB with a transcript excerpt.
LIVE_FINDINGS = 512


class SpillStore:
    """Items by key, in the order they were added (as a dict keeps them)."""

    def __init__(self, live: int):
        self.live = max(1, live)
        self.order: list[Hashable] = []
        self._held: OrderedDict[Hashable, dict] = OrderedDict()
        self._spilled: set[Hashable] = set()
        self._db: sqlite3.Connection | None = None

    def __len__(self) -> int:
        return len(self.order)

    def add(self, key: Hashable, item: dict) -> None:
        self.order.append(key)
        self._held[key] = item

    def get(self, key: Hashable) -> dict | None:
        """The item to change: held again (read back from disk if it was spilled)."""
        item = self._held.get(key)
        if item is not None:
            self._held.move_to_end(key)
            return item
        if key not in self._spilled:
            return None
        item = self._held[key] = self._read(key)
        return item

    def settle(self) -> None:
        """Spills what is held beyond `live`, least recently touched first. Called between
        the builder's steps, never inside one: an item a step holds and changes is not
        written out before the step is done with it."""
        while len(self._held) > self.live:
            key, item = self._held.popitem(last=False)
            if self._db is None:
                self._db = sqlite3.connect("")
                self._db.execute("CREATE TABLE items (key PRIMARY KEY, data BLOB)")
            self._db.execute("INSERT OR REPLACE INTO items VALUES (?, ?)",
                             (key, pickle.dumps(item, pickle.HIGHEST_PROTOCOL)))
            self._spilled.add(key)

    def read(self, key: Hashable) -> dict:
        """The item to read (not to change): not held again, so reading every item for the
        output does not spill and reread the ones in memory."""
        item = self._held.get(key)
        return item if item is not None else self._read(key)

    def values(self) -> Iterator[dict]:
        for key in self.order:
            yield self.read(key)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _read(self, key: Hashable) -> dict:
        (data,) = self._db.execute("SELECT data FROM items WHERE key = ?", (key,)).fetchone()
        return pickle.loads(data)
