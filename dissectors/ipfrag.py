"""IP fragment reassembly: IPv4 (RFC 791) and IPv6 (RFC 8200 4.5, RFC 5722).

`FragmentReassembler.add` takes one fragment's payload (the octets after the IP
header, or after the IPv6 Fragment header) with its offset and More Fragments
flag, and returns the whole datagram's payload when its last hole closes, else
None. Only captures that fragment reach this module: capture.py's fast path for
ordinary packets never calls it.

What the RFCs ask, and what is done:

* The key is (version, source, destination, protocol, identification) for IPv4
  (RFC 791 3.2) and (source, destination, identification) for IPv6 (RFC 8200 4.5).
* Fragments come in any order; exact duplicates (same offset, same length, same
  octets) are dropped and counted, as RFC 8200 4.5 allows and mirrored traffic needs.
* IPv4 overlaps: the first-seen octets are kept (as the TCP layer does, and as
  Wireshark does); an overlap whose octets differ is reported (``ip.frag_overlap``),
  because it is the classic IDS-evasion trick (RFC 1858, Ptacek & Newsham).
* IPv6 overlaps: the whole datagram is discarded, and the fragments of it that come
  later too (RFC 5722 4); reported as ``ip.frag_overlap_dropped``.
* A datagram that would exceed 65,535 octets (offset + length) is discarded
  (``ip.frag_too_big``); an IPv6 non-final fragment whose length is not a multiple
  of 8 is discarded (RFC 8200 4.5, ``ip.frag_bad_length``).
* Timeouts are in capture time, 60 s from the first fragment: RFC 8200's value, and
  within RFC 791's (a timer of at least 15 s, raised to each fragment's TTL, up to
  255 s). One value for both versions keeps the pending datagrams in deadline order,
  so expiry is a look at the oldest. An expired datagram is reported
  (``ip.frag_timeout``) and dropped; one still open when the capture ends is reported
  as ``ip.frag_incomplete``.

Memory: at most ``max_datagrams`` datagrams pending, ``max_fragments`` fragments in
one datagram and ``max_bytes`` octets over all of them; beyond a limit the oldest
pending datagram is dropped and reported (``ip.frag_pending_limit``,
``ip.frag_too_many``). Discarded keys are remembered (bounded) until their timeout
so that the rest of a refused datagram is dropped quietly instead of restarting it.
"""

from __future__ import annotations

import zlib
from typing import Callable

from wmiscope.spec.anomalies import ANOMALIES as _CATALOG

from .records import ErrorRecord

# Its anomaly names live in the catalog (wmiscope/spec/anomalies.py, layer "ip"); this is
# a view of them, not a second table.
ANOMALIES = {a.name: a for a in _CATALOG if a.layer == "ip"}


MAX_DATAGRAM = 65535
TIMEOUT = 60.0
# Completed datagrams are remembered (to drop late copies of their fragments) up to
# this many fragments over all of them; the oldest are forgotten first.
_REMEMBER_FRAGMENTS = 65536


class _Datagram:
    __slots__ = ("key", "first_frame", "deadline", "parts", "end", "size", "got", "seen")

    def __init__(self, key, frame: int, deadline: float):
        self.key = key
        self.first_frame = frame
        self.deadline = deadline
        self.parts: list[tuple[int, bytes]] = []    # (offset, octets), sorted by offset
        self.end: int | None = None                 # payload length, known from the last fragment
        self.size = 0                               # octets held
        self.got = 0                                # fragments held
        self.seen: list[tuple[int, int]] = []       # (offset, crc32) of each fragment taken


class FragmentReassembler:
    """Pending IPv4/IPv6 datagrams of one analysis; see the module docstring."""

    def __init__(self, errors: Callable[[ErrorRecord], None] | None = None, *, max_datagrams: int = 4096,
                 max_fragments: int = 1024, max_bytes: int = 64 << 20, max_discarded: int = 1024):
        self._errors = errors
        self.max_datagrams = max_datagrams
        self.max_fragments = max_fragments
        self.max_bytes = max_bytes
        self.max_discarded = max_discarded
        self._pending: dict[tuple, _Datagram] = {}     # insertion order = age
        self._discarded: dict[tuple, float] = {}       # key -> until (capture time)
        # Datagrams just completed: key -> (until, {(offset, crc32) of each fragment}),
        # so that a duplicate fragment arriving after the datagram closed (mirrored
        # traffic, retransmitted by a sensor) is dropped instead of opening a new one.
        self._done: dict[tuple, tuple[float, frozenset]] = {}
        self._done_fragments = 0
        self._bytes = 0
        self.stats = {"fragments": 0, "reassembled": 0, "duplicates": 0, "dropped_fragments": 0}

    # -- public -----------------------------------------------------------------

    def add(self, key: tuple, v6: bool, frame: int, ts: float, offset: int, more: bool,
            payload: bytes, header_len: int = 0) -> bytes | None:
        """One fragment; the reassembled payload when this fragment completes its datagram.

        key: hashable, includes the version. header_len: the IPv4 header length, which
        counts towards the 65,535-octet limit (IPv6's payload length excludes its header).
        """
        self.stats["fragments"] += 1
        if self._pending or self._discarded or self._done:
            self._expire(ts, frame)
        if key in self._discarded:
            self.stats["dropped_fragments"] += 1
            return None
        done = self._done.get(key)
        if done is not None:
            if (offset, zlib.crc32(payload)) in done[1]:
                self.stats["duplicates"] += 1
                return None
            # Not a copy of the closed datagram: a new one reusing its identification
            # (a TCP retransmission sent again with the same IP id, an id wrapped round).
            self._forget(key)
        length = len(payload)
        stop = offset + length
        if header_len + stop > MAX_DATAGRAM:
            return self._refuse(key, ts, frame, v6, "ip.frag_too_big",
                                f"fragment at offset {offset} of {length} octets ends past 65,535 octets")
        if v6 and more and length & 7:
            return self._refuse(key, ts, frame, v6, "ip.frag_bad_length",
                                f"non-final fragment of {length} octets (not a multiple of 8)")
        dg = self._pending.get(key)
        if dg is None:
            if len(self._pending) >= self.max_datagrams:
                self._evict_oldest(frame, "pending datagrams", self.max_datagrams)
            dg = _Datagram(key, frame, ts + TIMEOUT)
            self._pending[key] = dg
        if (dg.end is not None and (stop > dg.end or not more and stop != dg.end)
                or not more and dg.parts and dg.parts[-1][0] + len(dg.parts[-1][1]) > stop):
            # The fragments held and this one cannot be one datagram. The identification
            # was reused (a capturing host's segmentation offload repeats it, an id wraps
            # round): what is held is dropped, this fragment starts the datagram anew.
            self._report(frame, "ip.frag_inconsistent_end",
                         f"fragment [{offset}, {stop}){'' if more else ' (last)'} does not fit "
                         + self._describe(dg) + "; those discarded")
            self._drop(dg)
            dg = _Datagram(key, frame, ts + TIMEOUT)
            self._pending[key] = dg
        if not more:
            dg.end = stop
        placed = self._place(dg, offset, payload, frame, v6)
        if placed is None:
            return None
        if placed:
            dg.seen.append((offset, zlib.crc32(payload)))
        if dg.got > self.max_fragments:
            return self._refuse(key, ts, frame, v6, "ip.frag_too_many",
                                f"more than {self.max_fragments} fragments")
        while self._bytes > self.max_bytes and self._pending:
            self._evict_oldest(frame, "octets pending", self.max_bytes)
        if dg.end is None or dg.size < dg.end or key not in self._pending:
            return None
        # Complete when the parts, sorted and never overlapping in what they hold, cover [0, end).
        pos = 0
        for o, p in dg.parts:
            if o != pos:
                return None
            pos += len(p)
        del self._pending[key]
        self._bytes -= dg.size
        self.stats["reassembled"] += 1
        self._done[key] = (dg.deadline, frozenset(dg.seen))
        self._done_fragments += len(dg.seen)
        while self._done_fragments > _REMEMBER_FRAGMENTS or len(self._done) > self.max_discarded:
            self._forget(next(iter(self._done)))
        return b"".join(p for _, p in dg.parts)

    def finish(self, frame: int | None = None) -> None:
        """The end of the capture: what is still pending is reported as incomplete."""
        for dg in list(self._pending.values()):
            self._report(dg.first_frame, "ip.frag_incomplete", self._describe(dg) + " at the end of the capture")
        self._pending.clear()
        self._discarded.clear()
        self._done.clear()
        self._done_fragments = 0
        self._bytes = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    # -- inside -----------------------------------------------------------------

    def _place(self, dg: _Datagram, offset: int, payload: bytes, frame: int, v6: bool) -> bool | None:
        """Puts the octets of [offset, offset+len) not yet held into dg: True when some were
        new, False for a duplicate, None when dg was refused (IPv6 overlap)."""
        stop = offset + len(payload)
        parts = dg.parts
        # The usual arrivals, in order or in reverse order, touch no held octet.
        if not parts or offset >= parts[-1][0] + len(parts[-1][1]):
            parts.append((offset, payload))
        elif stop <= parts[0][0]:
            parts.insert(0, (offset, payload))
        else:
            return self._place_between(dg, offset, stop, payload, frame, v6)
        dg.size += len(payload)
        dg.got += 1
        self._bytes += len(payload)
        return True

    def _place_between(self, dg: _Datagram, offset: int, stop: int, payload: bytes, frame: int,
                       v6: bool) -> bool | None:
        parts = dg.parts
        new: list[tuple[int, bytes]] = []
        pos = offset
        conflict = False
        for o, p in parts:
            e = o + len(p)
            if e <= offset or o >= stop:
                continue
            if o == offset and e == stop and p == payload:
                self.stats["duplicates"] += 1
                return False
            if v6:
                self._refuse(dg.key, dg.deadline - TIMEOUT, frame, True, "ip.frag_overlap_dropped",
                             f"fragment [{offset}, {stop}) overlaps [{o}, {e}); datagram discarded")
                return None
            lo, hi = max(o, offset), min(e, stop)
            if p[lo - o:hi - o] != payload[lo - offset:hi - offset]:
                conflict = True
        if conflict:
            self._report(frame, "ip.frag_overlap",
                         f"fragment [{offset}, {stop}) overlaps held octets with different ones; first-seen kept")
        # The new fragment's octets that fall in holes between held parts.
        for o, p in sorted(parts):
            e = o + len(p)
            if e <= pos:
                continue
            if o >= stop:
                break
            if o > pos:
                new.append((pos, payload[pos - offset:o - offset]))
            pos = max(pos, e)
        if pos < stop:
            new.append((pos, payload[pos - offset:]))
        if not new:
            self.stats["duplicates"] += 1
            return False
        parts.extend(new)
        parts.sort(key=_first)
        added = sum(len(p) for _, p in new)
        dg.size += added
        dg.got += 1
        self._bytes += added
        return True

    def _forget(self, key) -> None:
        self._done_fragments -= len(self._done.pop(key)[1])

    def _drop(self, dg: _Datagram) -> None:
        del self._pending[dg.key]
        self._bytes -= dg.size
        self.stats["dropped_fragments"] += dg.got

    def _refuse(self, key, ts: float, frame: int, v6: bool, kind: str, reason: str) -> None:
        dg = self._pending.get(key)
        if dg is not None:
            self._drop(dg)
            ts = min(ts, dg.deadline - TIMEOUT)
        if len(self._discarded) >= self.max_discarded:
            self._discarded.pop(next(iter(self._discarded)))
        self._discarded[key] = ts + TIMEOUT
        self.stats["dropped_fragments"] += 1
        self._report(frame, kind, reason)
        return None

    def _expire(self, ts: float, frame: int) -> None:
        pending = self._pending
        while pending:
            dg = next(iter(pending.values()))
            if dg.deadline >= ts:
                break
            self._drop(dg)
            self._report(dg.first_frame, "ip.frag_timeout",
                         self._describe(dg) + f", timed out by frame {frame}")
        discarded = self._discarded
        while discarded:
            key, until = next(iter(discarded.items()))
            if until >= ts:
                break
            del discarded[key]
        done = self._done
        while done:
            key, (until, _) = next(iter(done.items()))
            if until >= ts:
                break
            self._forget(key)

    def _evict_oldest(self, frame: int, what: str, limit: int) -> None:
        dg = next(iter(self._pending.values()))
        self._drop(dg)
        self._report(dg.first_frame, "ip.frag_pending_limit",
                     f"{what} over the limit of {limit} at frame {frame}: " + self._describe(dg) + " discarded")

    @staticmethod
    def _describe(dg: _Datagram) -> str:
        end = "unknown length" if dg.end is None else f"{dg.end} octets"
        return f"datagram id {dg.key[-1]:#x} ({end}) with {dg.got} fragment(s), {dg.size} octets held"

    def _report(self, frame: int, kind: str, reason: str) -> None:
        if self._errors is not None:
            self._errors(ErrorRecord(stage="ip", reason=reason, frame=frame, structure="IP fragment", kind=kind))


def _first(part: tuple[int, bytes]) -> int:
    return part[0]
