"""Capture sources (pcap, pcapng, gzip, live) and link-layer decapsulation down to TCP.

Two halves, both on the per-packet hot path:

* `open_capture(path)` streams raw frames out of a capture file:
  ``(frame number, epoch seconds, linktype, frame bytes)``. It reads the file in
  large chunks and slices records out of them with precompiled `struct.Struct`s,
  so memory stays at about one chunk whatever the file size.
* `open_sources(paths)` reads several files, folders or glob patterns as one
  `CaptureSet`, merged in time order (mergecap's order and frame numbering), with
  `origin(frame)` naming the file and the frame inside it.
* `tcp_segment(linktype, frame, ctx, number, ts)` peels the link layer, IPv4/IPv6
  and the TCP header off a frame and returns a `TcpSegment`, or None when the frame
  carries no TCP (yet). Only untagged IPv4/TCP on Ethernet takes the inlined fast
  path; everything else goes through a `Decapsulation` (one per analysis) that
  reassembles IP fragments (dissectors/ipfrag.py) and opens tunnels
  (dissectors/encap.py).

Formats (the "pcap" and "pcapng" Internet-Drafts of the IETF OPSAWG):

* pcap: both byte orders, microsecond (0xA1B2C3D4) and nanosecond (0xA1B23C4D)
  magic, and the 24-byte-record variant (0xA1B2CD34).
* pcapng: Section Header Blocks in either byte order and several sections per
  file; Interface Description Blocks each with their own link type,
  ``if_tsresol`` and ``if_tsoffset``; Enhanced, Simple and the obsolete Packet
  Blocks. Every other block type is skipped.
* Either one gzip-compressed, recognised by its magic number, not its name.

Errors: a truncated last record, a corrupt block or a damaged gzip stream ends the
iteration with one `ErrorRecord` (stage "capture") instead of an exception; its
offset is in the stream of capture records, except for a damaged gzip stream,
located at its compressed octets in the file. A timestamp outside 1970..9999 is
clamped, with one record for all such frames. The
record goes to the ``errors`` callback given to `open_capture` and is also kept
in the reader's ``errors`` list. A file that is not a capture at all raises
`CaptureFormatError` when it is opened (before the first frame).
"""

from __future__ import annotations

import bisect
import glob
import gzip
import heapq
import ipaddress
import os
import socket
import struct
import time
import zlib
from array import array
from typing import BinaryIO, Callable, Iterator, NamedTuple

from . import encap as _encap
from .records import ErrorRecord

__all__ = [
    "RawFrame", "TcpSegment", "CaptureReader", "CaptureFormatError", "open_capture",
    "live_capture", "tcp_segment", "counters", "reset_counters", "Decapsulation",
    "CaptureSet", "open_sources", "expand_sources",
]

RawFrame = tuple[int, float, int, bytes]
"""(frame number, 1-based as tshark counts; epoch seconds; linktype; frame bytes)"""

CHUNK = 1 << 20
# The largest record Wireshark accepts for ordinary link types
# (WTAP_MAX_PACKET_SIZE_STANDARD); a bigger pcap record means a corrupt file.
MAX_RECORD = 262144
# A pcapng block may carry options besides its packet; anything this large is corruption.
MAX_BLOCK = 16 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_SHB_TYPE = 0x0A0D0D0A


class CaptureFormatError(ValueError):
    """The file is neither pcap nor pcapng (plain or gzip-compressed)."""


# --- pcap ---------------------------------------------------------------------

# magic as read little-endian -> (byte order, seconds per fraction unit, record header length)
_PCAP_MAGICS = {
    0xA1B2C3D4: ("<", 1e-6, 16), 0xD4C3B2A1: (">", 1e-6, 16),
    0xA1B23C4D: ("<", 1e-9, 16), 0x4D3CB2A1: (">", 1e-9, 16),
    # Kuznetzov's patched libpcap: four more octets (ifindex, protocol, pkt_type, pad) per record.
    0xA1B2CD34: ("<", 1e-6, 24), 0x34CDB2A1: (">", 1e-6, 24),
}
_PCAP_FILE_HEADER = {bo: struct.Struct(bo + "IHHiIII") for bo in "<>"}
_PCAP_RECORD = {bo: struct.Struct(bo + "IIII") for bo in "<>"}


# --- pcapng -------------------------------------------------------------------

class _PcapngStructs:
    """The block layouts of one byte order (a section chooses its own)."""

    __slots__ = ("block", "u32", "shb", "idb", "epb", "pb", "opt", "i64")

    def __init__(self, bo: str):
        self.block = struct.Struct(bo + "II")            # block type, block total length
        self.u32 = struct.Struct(bo + "I")
        self.shb = struct.Struct(bo + "HHq")             # after the byte-order magic: major, minor, section length
        self.idb = struct.Struct(bo + "HHI")             # LinkType, reserved, SnapLen
        self.epb = struct.Struct(bo + "IIIII")           # interface, ts high, ts low, captured, original
        self.pb = struct.Struct(bo + "HHIIII")           # interface, drops, ts high, ts low, captured, original
        self.opt = struct.Struct(bo + "HH")              # option code, option length
        self.i64 = struct.Struct(bo + "q")


_PCAPNG = {"<": _PcapngStructs("<"), ">": _PcapngStructs(">")}
_BYTE_ORDER_MAGIC = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}

_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14

# Timestamps a calendar can show: 1970-01-01 up to the end of year 9999. A hostile
# if_tsresol / if_tsoffset (or timestamp) can put a packet anywhere from -2**63 s to
# 10**19 years; such times are clamped into this range, with one located record.
TS_MAX = 253402300799.0         # 9999-12-31T23:59:59Z (a float keeps no more microseconds)


class _Interface:
    __slots__ = ("linktype", "snaplen", "units", "offset")

    def __init__(self, linktype: int, snaplen: int, units: int, offset: int):
        self.linktype = linktype
        self.snaplen = snaplen
        self.units = units          # timestamp units per second
        self.offset = offset        # if_tsoffset, seconds


class _Prepended:
    """A non-seekable stream with the octets already read for sniffing put back in front.

    It counts the octets handed out (``consumed``) and the size of the last read
    (``last``): gzip reads its input a few kilobytes at a time, so when the
    decompressor fails, the damage lies in the file's octets consumed-last .. consumed.
    """

    def __init__(self, head: bytes, f):
        self._head = head
        self._f = f
        self.consumed = 0
        self.last = 0

    def read(self, n: int = -1) -> bytes:
        data = self._read(n)
        self.last = len(data)
        self.consumed += self.last
        return data

    def _read(self, n: int) -> bytes:
        head = self._head
        if not head:
            return self._f.read(n)
        self._head = b""
        if n < 0:
            return head + self._f.read()
        if n <= len(head):
            self._head = head[n:]
            return head[:n]
        return head + self._f.read(n - len(head))

    def damage(self, exc: BaseException) -> tuple[int, str]:
        """Where in the compressed file a decompression error lies, and what it was."""
        if isinstance(exc, EOFError):
            return self.consumed, f"compressed data cut short at octet {self.consumed} of the file"
        start = self.consumed - self.last
        return start, f"compressed data damaged within octets {start}..{self.consumed} of the file: {exc}"


class CaptureReader:
    """Iterator over the `RawFrame`s of one capture file.

    Attributes: ``format`` ("pcap" | "pcapng"), ``compressed`` (gzip),
    ``errors`` (the ErrorRecords met: at most one that stops the reading, and one for clamped timestamps),
    ``frames`` (how many frames the file held, set when the iteration ends),
    ``linktypes`` (link types seen in the file's headers).
    ``for frame in reader`` runs the underlying generator directly.
    """

    def __init__(self, source, errors: Callable[[ErrorRecord], None] | None = None):
        self.errors: list[ErrorRecord] = []
        self._callback = errors
        self._ts_record: ErrorRecord | None = None
        self.frames = 0
        self.linktypes: list[int] = []
        self.name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")
        if isinstance(source, (str, os.PathLike)):
            # Unbuffered: we read megabyte chunks ourselves, a second buffer would only copy.
            f = open(source, "rb", buffering=0)
            self._owned = True
        else:
            f = source
            self._owned = False
        self._raw = f
        try:
            self._f, self.compressed, head = self._sniff(f)
            self._offset = 0        # stream offset (after decompression) of the buffer's first octet
            self._aside: tuple[bytes, int] | None = None    # a chunk read, and where its unread octets start
            if len(head) < 4:
                raise CaptureFormatError(f"{self.name}: too short to be a capture file")
            magic = struct.unpack_from("<I", head)[0]
            if magic == _SHB_TYPE:
                self.format = "pcapng"
                self._gen = self._pcapng(head)
            elif magic in _PCAP_MAGICS:
                self.format = "pcap"
                self._gen = self._pcap(head)
            else:
                raise CaptureFormatError(f"{self.name}: not a pcap or pcapng file (magic {head[:4].hex()})")
        except BaseException:
            if self._owned:
                f.close()
            raise

    # The generator itself is the iterator: no Python-level __next__ per frame.
    def __iter__(self) -> Iterator[RawFrame]:
        return self._gen

    def __next__(self) -> RawFrame:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()
        self._release()

    def _release(self) -> None:
        if self._f is not self._raw:
            self._f.close()         # a GzipFile does not close the file it was handed
        if self._owned:
            self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def _sniff(self, f) -> tuple[BinaryIO, bool, bytes]:
        """Opens gzip when the magic says so; returns (stream, compressed, first octets)."""
        head = f.read(CHUNK)
        while 0 < len(head) < 64:     # a pipe may hand out the first octets piecemeal
            more = f.read(CHUNK)
            if not more:
                break
            head += more
        if head[:2] == _GZIP_MAGIC:
            raw = _Prepended(head, f)
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            try:
                head = gz.read1(CHUNK)
                while 0 < len(head) < 64:
                    more = gz.read1(CHUNK)
                    if not more:
                        break
                    head += more
            except (OSError, EOFError, zlib.error) as exc:
                raise CaptureFormatError(f"{self.name}: damaged gzip stream: {raw.damage(exc)[1]}") from None
            # read1: what has been decompressed so far comes out before a damaged
            # or cut-short stream raises, so no frame before the damage is lost.
            self._readfn = gz.read1
            self._gzip_input = raw
            return gz, True, head
        self._readfn = f.read
        return f, False, head

    def _read(self, n: int, frame: int) -> bytes | None:
        """The next octets of the stream; b"" at its end, None when the stream is damaged."""
        try:
            return self._readfn(n)
        except (OSError, EOFError, zlib.error) as exc:
            if self.compressed:
                # Located in the file as it is on disk: the compressed octets.
                offset, reason = self._gzip_input.damage(exc)
                self._fail(frame, offset, "gzip stream", reason, kind="capture.gzip_damaged")
            else:
                self._fail(frame, self._offset, "file", f"read failed: {exc}", kind="capture.read_failed")
            return None

    def _fail(self, frame: int, offset: int, structure: str, reason: str, kind: str = "capture.corrupt_record") -> None:
        rec = ErrorRecord(stage="capture", reason=reason, frame=frame, structure=structure, offset=offset, kind=kind)
        self.errors.append(rec)
        if self._callback is not None:
            self._callback(rec)

    def _refill(self, buf: bytes, pos: int, missing: int, frame: int, structure: str,
                cut_short: str) -> tuple[bytes, int] | None:
        """(buffer, position) to go on from: the unread rest of ``buf`` (from ``pos``) with
        the next octets of the stream behind it.

        Called when the record or block at ``pos`` lacks ``missing`` octets: at least a
        chunk is read, so this runs about once per megabyte and the per-record path only
        slices. The chunk is not copied behind the rest: the record cut by the chunk's
        start is made of the rest and the octets it lacks, and the chunk itself, kept
        aside, is the buffer after it (a copy of every megabyte was 1% of a run's
        instructions). None ends the iteration: at a damaged stream (already reported), or
        at the end of the stream, where a record begun at ``pos`` is reported as
        ``cut_short``; a stream ending exactly between records is no error.
        """
        at = self._offset + pos                 # the stream offset of buf[pos]
        aside = self._aside
        if aside is None:
            more = self._read(max(CHUNK, missing), frame)
            if not more:
                if more is not None and pos < len(buf):
                    self._fail(frame, at, structure, cut_short, kind="capture.truncated")
                return None
            start = 0
        else:
            more, start = aside
            self._aside = None
        rest = len(buf) - pos
        if not rest:
            self._offset = at - start
            return more, start
        self._offset = at
        if start + missing < len(more):
            self._aside = (more, start + missing)
            return buf[pos:] + more[start:start + missing], 0
        return buf[pos:] + more[start:], 0

    def _finish(self, frames: int) -> None:
        self.frames = frames
        self._release()

    # -- pcap -----------------------------------------------------------------------

    def _pcap(self, buf: bytes) -> Iterator[RawFrame]:
        magic = struct.unpack_from("<I", buf)[0]
        bo, scale, hdrlen = _PCAP_MAGICS[magic]
        header = _PCAP_FILE_HEADER[bo]
        if len(buf) < header.size:
            self._fail(1, 0, "pcap file header", "file ends inside the 24-octet file header", kind="capture.truncated")
            self._finish(0)
            return
        _, major, minor, _, _, snaplen, network = header.unpack_from(buf)
        # The upper half of the LinkType field carries FCS-length flags, not the type.
        linktype = network & 0xFFFF
        self.linktypes.append(linktype)
        unpack = _PCAP_RECORD[bo].unpack_from
        refill = self._refill
        pos = header.size
        n = len(buf)
        frame = 0
        try:
            while True:
                if n - pos < hdrlen:
                    got = refill(buf, pos, hdrlen - (n - pos), frame + 1, "pcap record header",
                                 f"file ends inside a record header ({n - pos} of {hdrlen} octets)")
                    if got is None:
                        return
                    buf, pos = got
                    n = len(buf)
                    continue
                sec, frac, incl, orig = unpack(buf, pos)
                if incl > MAX_RECORD:
                    self._fail(frame + 1, self._offset + pos, "pcap record header",
                               f"captured length {incl} exceeds {MAX_RECORD}: corrupt record")
                    return
                end = pos + hdrlen + incl
                if end > n:
                    got = refill(buf, pos, end - n, frame + 1, "pcap record",
                                 f"file ends inside a record ({n - pos - hdrlen} of {incl} octets)")
                    if got is None:
                        return
                    buf, pos = got
                    n = len(buf)
                    continue
                frame += 1
                yield frame, sec + frac * scale, linktype, buf[pos + hdrlen:end]
                pos = end
        finally:
            self._finish(frame)

    # -- pcapng ---------------------------------------------------------------------

    def _pcapng(self, buf: bytes) -> Iterator[RawFrame]:
        refill = self._refill
        pos = 0
        n = len(buf)
        frame = 0
        ifaces: list[_Interface] = []
        S = _PCAPNG["<"]
        last_ts = 0.0
        try:
            while True:
                # A block: type, total length, body, total length again.
                if n - pos < 12:
                    got = refill(buf, pos, 12 - (n - pos), frame + 1, "pcapng block header",
                                 f"file ends inside a block header ({n - pos} octets)")
                    if got is None:
                        return
                    buf, pos = got
                    n = len(buf)
                    continue
                btype, blen = S.block.unpack_from(buf, pos)
                if btype == _SHB_TYPE:
                    # The Section Header Block's byte-order magic fixes the byte order
                    # of everything up to the next section, its own length included.
                    bo = _BYTE_ORDER_MAGIC.get(buf[pos + 8:pos + 12])
                    if bo is None:
                        self._fail(frame + 1, self._offset + pos, "pcapng Section Header Block",
                                   f"bad byte-order magic {buf[pos + 8:pos + 12].hex()}")
                        return
                    S = _PCAPNG[bo]
                    blen = S.u32.unpack_from(buf, pos + 4)[0]
                if blen < 12 or blen & 3 or blen > MAX_BLOCK:
                    self._fail(frame + 1, self._offset + pos, "pcapng block",
                               f"block type {btype:#x} has impossible total length {blen}")
                    return
                end = pos + blen
                if end > n:
                    got = refill(buf, pos, end - n, frame + 1, "pcapng block",
                                 f"file ends inside a block of type {btype:#x} ({n - pos} of {blen} octets)")
                    if got is None:
                        return
                    buf, pos = got
                    n = len(buf)
                    continue
                if S.u32.unpack_from(buf, end - 4)[0] != blen:
                    self._fail(frame + 1, self._offset + pos, "pcapng block",
                               f"block type {btype:#x}: leading and trailing total lengths differ")
                    return
                if btype == 6:                              # Enhanced Packet Block
                    ifid, hi, lo, caplen, _ = S.epb.unpack_from(buf, pos + 8)
                elif btype == 2:                            # Packet Block (obsolete): an EPB with a drops count
                    ifid, _, hi, lo, caplen, _ = S.pb.unpack_from(buf, pos + 8)
                else:
                    if btype == 3:                          # Simple Packet Block
                        if not ifaces:
                            self._fail(frame + 1, self._offset + pos, "pcapng Simple Packet Block",
                                       "no interface described before it")
                            return
                        iface = ifaces[0]
                        caplen = min(S.u32.unpack_from(buf, pos + 8)[0], blen - 16)
                        if iface.snaplen:
                            caplen = min(caplen, iface.snaplen)
                        frame += 1
                        # An SPB has no timestamp; it takes the previous packet's rather than 1970.
                        yield frame, last_ts, iface.linktype, buf[pos + 12:pos + 12 + caplen]
                    elif btype == 1:                        # Interface Description Block
                        if blen < 20:
                            self._fail(frame + 1, self._offset + pos, "pcapng Interface Description Block",
                                       f"block of {blen} octets is shorter than its fixed part")
                            return
                        ifaces.append(self._interface(S, buf, pos, end))
                    elif btype == _SHB_TYPE:
                        if blen < 28:
                            self._fail(frame + 1, self._offset + pos, "pcapng Section Header Block",
                                       f"block of {blen} octets is shorter than its fixed part")
                            return
                        major = S.shb.unpack_from(buf, pos + 12)[0]
                        if major != 1:
                            self._fail(frame + 1, self._offset + pos, "pcapng Section Header Block",
                                       f"unsupported major version {major}")
                            return
                        ifaces = []                         # interface ids are per section
                    # any other block type (statistics, name resolution, custom ...) is skipped
                    pos = end
                    continue
                # An Enhanced or obsolete Packet Block: the packet follows 28 octets of header.
                # The other kinds continue above, so the common EPB tests btype only once.
                if caplen > blen - 32 or ifid >= len(ifaces):
                    self._fail(frame + 1, self._offset + pos,
                               "pcapng Enhanced Packet Block" if btype == 6 else "pcapng Packet Block",
                               f"captured length {caplen} in a {blen}-octet block"
                               if caplen > blen - 32 else
                               f"interface {ifid} not described (only {len(ifaces)})")
                    return
                iface = ifaces[ifid]
                frame += 1
                last_ts = ((hi << 32) | lo) / iface.units + iface.offset
                if not 0.0 <= last_ts <= TS_MAX:
                    last_ts = self._clamp_ts(last_ts, frame, self._offset + pos)
                yield frame, last_ts, iface.linktype, buf[pos + 28:pos + 28 + caplen]
                pos = end
        finally:
            self._finish(frame)

    def _clamp_ts(self, ts: float, frame: int, offset: int) -> float:
        """An out-of-range timestamp clamped; the first is reported, and the record counts the rest."""
        clamped = 0.0 if ts < 0 else TS_MAX
        rec = self._ts_record
        if rec is None:
            self._fail(frame, offset, "pcapng Enhanced Packet Block",
                       f"timestamp {ts:.6g} s (from if_tsresol/if_tsoffset) is outside 1970..9999: clamped",
                       kind="capture.timestamp_out_of_range")
            self._ts_record = rec = self.errors[-1]
            self._ts_clamped = 0
        self._ts_clamped += 1
        if self._ts_clamped > 1:
            rec.reason = rec.reason.split(": clamped")[0] + f": clamped (and {self._ts_clamped - 1} frames after it)"
        return clamped

    def _interface(self, S: _PcapngStructs, buf: bytes, pos: int, end: int) -> _Interface:
        linktype, _, snaplen = S.idb.unpack_from(buf, pos + 8)
        units, offset = 1_000_000, 0
        opt = pos + 16
        stop = end - 4
        while opt + 4 <= stop:
            code, length = S.opt.unpack_from(buf, opt)
            if code == 0:
                break
            value = opt + 4
            if value + length > stop:
                break
            if code == _OPT_IF_TSRESOL and length >= 1:
                r = buf[value]
                # High bit set: a negative power of two, else a negative power of ten.
                units = 1 << (r & 0x7F) if r & 0x80 else 10 ** r
            elif code == _OPT_IF_TSOFFSET and length >= 8:
                offset = S.i64.unpack_from(buf, value)[0]
            opt = value + ((length + 3) & ~3)
        self.linktypes.append(linktype)
        return _Interface(linktype, snaplen, units, offset)


def open_capture(path: str | os.PathLike | BinaryIO,
                 errors: Callable[[ErrorRecord], None] | None = None) -> CaptureReader:
    """Frames of a pcap/pcapng file (gzip-compressed or not), streamed.

    ``path`` may also be an open binary file object (a pipe works: nothing seeks).
    ``errors`` receives the ErrorRecord (stage "capture") that ends a damaged file;
    the returned reader keeps it in ``reader.errors`` as well.
    Raises CaptureFormatError for a file that is no capture, OSError when it cannot be read.
    """
    return CaptureReader(path, errors)


MAX_ORIGIN_RUNS = 1 << 20


class CaptureSet:
    """Several capture files read as one, packets merged in time order.

    Iterating yields `RawFrame`s numbered 1, 2, ... across the whole set in the
    order they are merged: the earliest timestamp at the head of any file first,
    the earlier-named file on a tie. That is the order and the numbering of
    ``mergecap -w set.pcapng FILE...`` (chronological merge), so a frame number of
    a set's records is the number tshark shows on the merged file; `origin(frame)`
    gives the file and the frame number inside it, for tshark on that one file.
    A set of one file is that file: its numbers are the file's own.

    Memory: one pending frame per file for the merge, and one entry (24 octets) per
    run of consecutive frames from the same file for `origin`: one per file for
    rolling sensor files, at worst one per frame when files interleave packet by
    packet; then only the last MAX_ORIGIN_RUNS to 2 * MAX_ORIGIN_RUNS runs are kept
    (at most about 50 MB), and an older frame's origin is unknown.
    Errors: a damaged file ends only that file (its ErrorRecord, with ``file`` set,
    goes to ``errors``); a file that is no capture raises CaptureFormatError before
    any frame, naming the file.
    """

    def __init__(self, paths, errors: Callable[[ErrorRecord], None] | None = None):
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise CaptureFormatError("no capture files given")
        self.names = [os.path.basename(p) for p in self.paths]
        if len(set(self.names)) != len(self.names):
            self.names = list(self.paths)       # two folders with the same file name: keep them apart
        self._errors = errors
        self.errors: list[ErrorRecord] = []
        self._run_start = array("q")            # first global frame of each run
        self._run_file = array("q")             # file index of the run
        self._run_local = array("q")            # that file's frame number at the run's start
        self.frames = 0
        # Open every file now: a file that is no capture stops the run before any output.
        self._readers = []
        try:
            for i, p in enumerate(self.paths):
                self._readers.append(CaptureReader(p, self._file_errors(i)))
        except BaseException:
            self.close()
            raise

    def _file_errors(self, i: int):
        def report(rec: ErrorRecord) -> None:
            if len(self.paths) > 1:
                rec.file = self.names[i]
                rec.file_frame = rec.frame
                rec.frame = None
            self.errors.append(rec)
            if self._errors is not None:
                self._errors(rec)
        return report

    @property
    def multi(self) -> bool:
        return len(self.paths) > 1

    def __iter__(self) -> Iterator[RawFrame]:
        if not self.multi:
            return iter(self._readers[0])
        return self._merged()

    def _merged(self) -> Iterator[RawFrame]:
        def keyed(i, reader):
            for local, ts, linktype, data in reader:
                yield ts, i, local, linktype, data
        starts, files, locals_ = self._run_start, self._run_file, self._run_local
        frame = 0
        last_file = -1
        try:
            for ts, i, local, linktype, data in heapq.merge(*(keyed(i, r) for i, r in enumerate(self._readers))):
                frame += 1
                if i != last_file:
                    if len(starts) >= 2 * MAX_ORIGIN_RUNS:
                        # Files interleaving packet by packet make a run per frame: only the
                        # latest runs are kept, which is where records point.
                        del starts[:MAX_ORIGIN_RUNS], files[:MAX_ORIGIN_RUNS], locals_[:MAX_ORIGIN_RUNS]
                    starts.append(frame)
                    files.append(i)
                    locals_.append(local)
                    last_file = i
                yield frame, ts, linktype, data
        finally:
            self.frames = frame

    def origin(self, frame: int) -> tuple[str | None, int | None]:
        """(file name, frame number in that file) of a frame number of the set;
        (None, None) for a frame older than the runs kept (see MAX_ORIGIN_RUNS)."""
        if not self.multi:
            return self.names[0], frame
        k = bisect.bisect_right(self._run_start, frame) - 1
        if k < 0:
            return None, None
        return self.names[self._run_file[k]], self._run_local[k] + frame - self._run_start[k]

    def close(self) -> None:
        for r in self._readers:
            r.close()


def expand_sources(sources) -> list[str]:
    """The capture files that paths, folders and glob patterns name, in a stable order.

    A folder stands for the capture files directly in it (pcap, pcapng, cap, and
    those gzip-compressed), sorted by name; a pattern for its matches, sorted; a
    plain path for itself. Raises CaptureFormatError when something names nothing.
    """
    out: list[str] = []
    for s in sources:
        s = os.fspath(s)
        if os.path.isdir(s):
            found = sorted(os.path.join(s, n) for n in os.listdir(s)
                           if n.lower().endswith(_CAPTURE_SUFFIXES) and os.path.isfile(os.path.join(s, n)))
            if not found:
                raise CaptureFormatError(f"{s}: no capture files (.pcap, .pcapng, .cap) in this folder")
            out.extend(found)
        elif not os.path.exists(s) and glob.has_magic(s):
            found = sorted(p for p in glob.glob(s) if os.path.isfile(p))
            if not found:
                raise CaptureFormatError(f"{s}: no file matches this pattern")
            out.extend(found)
        else:
            out.append(s)
    seen = set()
    return [p for p in out if not (p in seen or seen.add(p))]


_CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz", ".ntar")


def open_sources(sources, errors: Callable[[ErrorRecord], None] | None = None) -> CaptureSet:
    """The `CaptureSet` of capture files, folders and glob patterns: one time-ordered stream.

    What every capture-reading command opens (wmiscope/commands/output.py), and the
    unit that parallel and distributed runs split.
    """
    return CaptureSet(expand_sources(sources), errors)


def live_capture(interface: str, bpf: str = "tcp", count: int | None = None, *, timeout: float | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[RawFrame]:
    """Frames captured live on ``interface`` through scapy's level-2 listening socket.

    The kernel applies ``bpf``; nothing is dissected by scapy: the raw bytes are
    yielded with the link type of the interface, numbered from 1. The socket is
    opened by this call (so capture starts now, and missing privileges raise
    PermissionError here, not at the first frame). Stops after ``count`` frames if
    given, or once ``should_stop()`` says so (asked at least every ``timeout``
    seconds while no packet comes); closing the iterator closes the socket.
    (dissectors/live.py chooses between this and dumpcap.)
    """
    from scapy.config import conf
    import scapy.layers.l2  # noqa: F401  (registers the link types of conf.l2types)

    sock = conf.L2listen(iface=interface, filter=bpf)
    if timeout is not None and hasattr(sock, "ins"):
        sock.ins.settimeout(timeout)
    return _live_frames(sock, conf, count, should_stop)


def _live_frames(sock, conf, count: int | None, should_stop=None) -> Iterator[RawFrame]:
    linktype = conf.l2types.layer2num.get(getattr(sock, "LL", None), 1)
    # On Linux, scapy's own receive routine also hands back the packet-socket address,
    # whose packet type lets us drop the outgoing copy the loopback device shows of
    # every packet (libpcap does the same); elsewhere the portable recv_raw is used.
    receive = getattr(sock, "_recv_raw", None)
    ins = getattr(sock, "ins", None)
    try:
        loopback = receive is not None and ins.getsockname()[3] == _ARPHRD_LOOPBACK
    except (OSError, AttributeError, IndexError, TypeError):
        loopback = False
    frame = 0
    try:
        while count is None or frame < count:
            if should_stop is not None and should_stop():
                break
            if receive is not None:
                try:
                    data, sa_ll, ts = receive(ins, 65535)
                except TimeoutError:
                    continue
                if loopback and sa_ll[2] == _PACKET_OUTGOING:
                    continue
            else:
                cls, data, ts = sock.recv_raw()
                if cls is not None:
                    linktype = conf.l2types.layer2num.get(cls, linktype)
            if not data:
                continue
            frame += 1
            yield frame, float(ts) if ts is not None else time.time(), linktype, data
    finally:
        sock.close()


_ARPHRD_LOOPBACK = 772
_PACKET_OUTGOING = 4


# --- link layer, IP, TCP ------------------------------------------------------------

class TcpSegment(NamedTuple):
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    # The tunnels the segment came through, outermost first (a tuple of small dicts
    # from dissectors/encap.py with the outer addresses added), or None.
    tunnel: tuple | None = None


# What was not turned into a TcpSegment, by cause. Module-wide: the pipeline reads
# and resets them per run (reset_counters()).
counters = {"not_tcp": 0, "malformed": 0, "truncated": 0, "fragments": 0, "unsupported_linktype": 0,
            "tunnelled": 0}


def reset_counters() -> dict:
    """The counters so far, and zero them."""
    snapshot = dict(counters)
    for k in counters:
        counters[k] = 0
    return snapshot


_ETH_IPV4 = struct.Struct("!HBxH2xHxB")   # EtherType at 12, then IPv4: ver/IHL, total length, flags/fragment, protocol
_IPV4 = struct.Struct("!BxHHHxB")        # ver/IHL, total length, identification, flags/fragment offset, protocol
_IPV6 = struct.Struct("!B3xHB")          # version/class, payload length, next header
_TCP = struct.Struct("!HHIIH")           # ports, sequence, acknowledgement, data offset/flags
# The fast path's one read, from the EtherType at 12 to the TCP flags at 46: _ETH_IPV4, the
# IPv4 addresses (8 octets at 26) and _TCP where they sit for IPv4 without options.
_ETH_IPV4_TCP = struct.Struct("!HBxH2xHxB2x8sHHIIH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32LE = struct.Struct("<I")
_new_segment = tuple.__new__

_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100))     # 802.1Q, 802.1ad, the old QinQ outer tag
_MPLS_TYPES = frozenset((0x8847, 0x8848))             # unicast, multicast label stacks
_IPV6_EXTENSIONS = frozenset((0, 43, 60))              # hop-by-hop, routing, destination options
_NULL_INET6 = frozenset((24, 28, 30))                  # AF_INET6 of NetBSD/OpenBSD, FreeBSD, Darwin
_RAW_IP = frozenset((101, 12, 14))

# (src, dst) text for the eight (IPv4) or 32 (IPv6) address octets: a capture has
# few hosts, so after warm-up an address pair costs one dict lookup.
_pairs: dict[bytes, tuple[str, str]] = {}
_PAIR_CACHE_MAX = 1 << 13


def _pair(key: bytes) -> tuple[str, str]:
    if len(_pairs) >= _PAIR_CACHE_MAX:
        _pairs.clear()
    if len(key) == 8:
        pair = (socket.inet_ntop(socket.AF_INET, key[:4]), socket.inet_ntop(socket.AF_INET, key[4:]))
    else:
        pair = (str(ipaddress.IPv6Address(key[:16])), str(ipaddress.IPv6Address(key[16:])))
    _pairs[key] = pair
    return pair


class Decapsulation:
    """The state that peeling a frame down to TCP needs beyond the frame itself.

    One per analysis: IP fragments pending reassembly (dissectors/ipfrag.py), and,
    for the frame being peeled, its number and time and the tunnels met on the way.
    Only the slow path (anything but untagged, unfragmented IPv4/TCP on Ethernet)
    touches it. ``tcp_segment`` without one still decapsulates tunnels but cannot
    reassemble: it delivers a first fragment's TCP and counts the others.
    """

    __slots__ = ("frag", "frame", "ts", "layers", "depth")

    def __init__(self, errors: Callable[[ErrorRecord], None] | None = None, *, reassemble: bool = True,
                 **limits):
        from .ipfrag import FragmentReassembler
        self.frag = FragmentReassembler(errors, **limits) if reassemble else None
        self.frame = 0
        self.ts = 0.0
        self.layers: list | None = None
        self.depth = 0

    def finish(self) -> None:
        if self.frag is not None:
            self.frag.finish()


# What tcp_segment uses when it is given no context: tunnels, but no reassembly.
_STATELESS = Decapsulation(reassemble=False)


def _tcp(data: bytes, t: int, end: int, addrs: bytes, ctx: Decapsulation) -> TcpSegment | None:
    """The TCP header at t; the segment (header and payload) ends at end."""
    sport, dport, seq, ack, off_flags = _TCP.unpack_from(data, t)
    start = t + ((off_flags >> 10) & 0x3C)
    if start < t + 20 or start > end:
        counters["malformed"] += 1
        return None
    pair = _pairs.get(addrs) or _pair(addrs)
    layers = ctx.layers
    if layers:
        counters["tunnelled"] += 1
        layers = tuple(layers)
    return _new_segment(TcpSegment, (pair[0], sport, pair[1], dport, seq, ack, off_flags & 0x1FF,
                                     data[start:end], layers))


def _tunnel(ctx: Decapsulation, addrs: bytes, found) -> tuple | None:
    """Notes a tunnel layer (with the outer addresses) and says what is inside it."""
    if found is None or ctx.depth >= _encap.MAX_DEPTH:
        counters["not_tcp"] += 1
        return None
    inner, off, layer = found
    if len(addrs) == 8 or len(addrs) == 32:     # not a header cut short by the frame's end
        pair = _pairs.get(addrs) or _pair(addrs)
        layer["src"], layer["dst"] = pair
    if ctx.layers is None:
        ctx.layers = [layer]
    else:
        ctx.layers.append(layer)
    ctx.depth += 1
    return inner, off


def _inner(data: bytes, kind: str, off: int, end: int, ctx: Decapsulation) -> TcpSegment | None:
    if kind == "ether":
        if off + 14 > end:
            counters["malformed"] += 1
            return None
        return _ethertype(data[:end], off + 14, _U16.unpack_from(data, off + 12)[0], ctx)
    if kind == "ipv4":
        return _ipv4(data[:end], off, ctx)
    if kind == "ipv6":
        return _ipv6(data[:end], off, ctx)
    return _mpls(data[:end], off, end, ctx)


def _mpls(data: bytes, off: int, end: int, ctx: Decapsulation) -> TcpSegment | None:
    found = _tunnel(ctx, b"", _encap.mpls(data, off, end))
    return None if found is None else _inner(data, found[0], found[1], end, ctx)


def _ip_payload(proto: int, data: bytes, p: int, end: int, addrs: bytes, ctx: Decapsulation) -> TcpSegment | None:
    """What an IP datagram carries, from p to end: TCP, or a tunnel to open."""
    if proto == 6:
        return _tcp(data, p, end, addrs, ctx)
    if proto == 17:
        # Most UDP is DNS, NetBIOS, LDAP pings ...: one port lookup before any tunnel work.
        if p + 4 > end or _U16.unpack_from(data, p + 2)[0] not in _encap.UDP_TUNNEL_PORTS:
            counters["not_tcp"] += 1
            return None
        found = _tunnel(ctx, addrs, _encap.udp(data, p, end))
    elif proto == 47:
        found = _tunnel(ctx, addrs, _encap.gre(data, p, end))
    elif proto == 4 or proto == 41:     # IP-in-IP, IPv6-in-IP (RFC 2003, RFC 4213)
        found = _tunnel(ctx, addrs, ("ipv4" if proto == 4 else "ipv6", p, {"proto": "ipip" if proto == 4 else "ip6ip"}))
    else:
        counters["not_tcp"] += 1
        return None
    return None if found is None else _inner(data, found[0], found[1], end, ctx)


def _ipv4(data: bytes, off: int, ctx: Decapsulation = _STATELESS) -> TcpSegment | None:
    vihl, total, ident, frag, proto = _IPV4.unpack_from(data, off)
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20:
        counters["malformed"] += 1
        return None
    if proto != 6 and proto not in _TUNNEL_PROTOS:
        counters["not_tcp"] += 1
        return None
    end = off + total
    if total == 0:
        end = len(data)                 # TCP segmentation offload on the capturing host
    elif total < ihl:
        counters["malformed"] += 1
        return None
    elif end > len(data):
        counters["truncated"] += 1      # cut by the snapshot length: what is there is delivered
        end = len(data)
    addrs = data[off + 12:off + 20]
    if frag & 0x3FFF:                   # a fragment: offset or More Fragments
        counters["fragments"] += 1
        reassembler = ctx.frag
        if reassembler is None:         # no state: the first fragment's TCP header is all there is
            if frag & 0x1FFF or proto != 6:
                return None
        else:
            whole = reassembler.add((4, addrs, proto, ident), False, ctx.frame, ctx.ts, (frag & 0x1FFF) << 3,
                                    bool(frag & 0x2000), data[off + ihl:end], ihl)
            if whole is None:
                return None
            return _ip_payload(proto, whole, 0, len(whole), addrs, ctx)
    return _ip_payload(proto, data, off + ihl, end, addrs, ctx)


_TUNNEL_PROTOS = frozenset((4, 17, 41, 47))


def _ipv6(data: bytes, off: int, ctx: Decapsulation = _STATELESS) -> TcpSegment | None:
    vtc, plen, nh = _IPV6.unpack_from(data, off)
    if vtc >> 4 != 6:
        counters["malformed"] += 1
        return None
    end = off + 40 + plen
    if plen == 0 or end > len(data):    # a jumbogram, or cut by the snapshot length
        if plen:
            counters["truncated"] += 1
        end = len(data)
    addrs = data[off + 8:off + 40]
    p = off + 40
    while nh != 6:
        if nh in _IPV6_EXTENSIONS:
            nh, hlen = data[p], (data[p + 1] + 1) << 3
        elif nh == 44:                  # fragment header (RFC 8200 4.5)
            offset_m = _U16.unpack_from(data, p + 2)[0]
            if offset_m & 0xFFF9:       # not an atomic fragment (RFC 6946): reassemble
                counters["fragments"] += 1
                reassembler = ctx.frag
                if reassembler is None:
                    if offset_m & 0xFFF8:
                        return None
                    nh, hlen = data[p], 8
                else:
                    whole = reassembler.add((6, addrs, _U32.unpack_from(data, p + 4)[0]), True, ctx.frame, ctx.ts,
                                            offset_m & 0xFFF8, bool(offset_m & 1), data[p + 8:end])
                    if whole is None:
                        return None
                    nh, data, p, end = data[p], whole, 0, len(whole)
                    continue
            else:
                nh, hlen = data[p], 8
        elif nh == 51:                  # authentication header, length in 4-octet units minus 2
            nh, hlen = data[p], (data[p + 1] + 2) << 2
        elif nh in _TUNNEL_PROTOS:
            return _ip_payload(nh, data, p, end, addrs, ctx)
        else:
            counters["not_tcp"] += 1
            return None
        p += hlen
        if p > end:
            counters["malformed"] += 1
            return None
    return _tcp(data, p, end, addrs, ctx)


def _ethertype(data: bytes, off: int, etype: int, ctx: Decapsulation = _STATELESS) -> TcpSegment | None:
    # VLAN tags (any number, 802.1Q inside 802.1ad QinQ) are a property of the link,
    # not a tunnel: they are skipped without a mark on the segment.
    while etype in _VLAN_TYPES:
        etype = _U16.unpack_from(data, off + 2)[0]
        off += 4
    if etype == 0x0800:
        return _ipv4(data, off, ctx)
    if etype == 0x86DD:
        return _ipv6(data, off, ctx)
    if etype in _MPLS_TYPES:
        return _mpls(data, off, len(data), ctx)
    if etype == 0x6558:                 # transparent Ethernet bridging straight on the link
        return _inner(data, "ether", off, len(data), ctx)
    counters["not_tcp"] += 1
    return None


def _raw_ip(data: bytes, off: int, ctx: Decapsulation = _STATELESS) -> TcpSegment | None:
    version = data[off] >> 4
    if version == 4:
        return _ipv4(data, off, ctx)
    if version == 6:
        return _ipv6(data, off, ctx)
    counters["malformed"] += 1
    return None


def tcp_segment(linktype: int, data: bytes, ctx: Decapsulation | None = None, frame: int = 0,
                ts: float = 0.0) -> TcpSegment | None:
    """The TCP segment a frame carries, or None (not TCP, a fragment still incomplete, malformed).

    Link types: 1 Ethernet (802.1Q / 802.1ad / QinQ tags), 113 Linux SLL, 276
    Linux SLL2, 101/12/14 raw IP, 228 raw IPv4, 229 raw IPv6, 0 and 108 BSD
    loopback (family in either byte order). The IP total / payload length trims
    Ethernet padding; a frame cut short by the snapshot length yields what it
    holds (the reassembler then sees the missing bytes as a gap). Why a frame
    was refused is counted in the module's ``counters``.

    Tunnels (VXLAN, Geneve, GRE, ERSPAN, MPLS, IP-in-IP, see dissectors/encap.py)
    are opened and the segment names them in ``tunnel``. With a `Decapsulation`
    ``ctx`` (one per analysis, given the frame's number and time), IP fragments are
    reassembled and the segment comes out of the frame that completes its datagram.
    """
    try:
        if linktype == 1 and len(data) >= 48:
            etype, vihl, total, frag, proto, addrs, sport, dport, seq, ack, off_flags = \
                _ETH_IPV4_TCP.unpack_from(data, 12)
            # Fast path: untagged IPv4 without options, unfragmented TCP.
            if etype == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF and total >= 40:
                end = 14 + total
                if end > len(data):
                    counters["truncated"] += 1
                    end = len(data)
                start = 34 + ((off_flags >> 10) & 0x3C)
                if start < 54 or start > end:
                    counters["malformed"] += 1
                    return None
                pair = _pairs.get(addrs) or _pair(addrs)
                return _new_segment(TcpSegment, (pair[0], sport, pair[1], dport, seq, ack,
                                                 off_flags & 0x1FF, data[start:end], None))
        elif linktype == 1:
            # Shorter than the fast path's read: what the first 24 octets say, as there.
            etype, vihl, total, frag, proto = _ETH_IPV4.unpack_from(data, 12)
            if etype == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF and total >= 40:
                if 14 + total > len(data):
                    counters["truncated"] += 1
                counters["malformed"] += 1      # no room for the TCP header
                return None
        # The slow path: anything else. The context learns which frame it peels.
        if ctx is None:
            ctx = _STATELESS
        ctx.frame, ctx.ts, ctx.layers, ctx.depth = frame, ts, None, 0
        if linktype == 1:
            return _ethertype(data, 14, _U16.unpack_from(data, 12)[0], ctx)
        if linktype == 113:                 # Linux cooked v1: protocol at 14, 16-octet header
            return _ethertype(data, 16, _U16.unpack_from(data, 14)[0], ctx)
        if linktype == 276:                 # Linux cooked v2: protocol first, 20-octet header
            return _ethertype(data, 20, _U16.unpack_from(data, 0)[0], ctx)
        if linktype in _RAW_IP:
            return _raw_ip(data, 0, ctx)
        if linktype == 228:
            return _ipv4(data, 0, ctx)
        if linktype == 229:
            return _ipv6(data, 0, ctx)
        if linktype == 0 or linktype == 108:
            family = _U32LE.unpack_from(data, 0)[0]
            if family > 0xFFFF:             # written in the other byte order
                family = int.from_bytes(data[:4], "big")
            if family == 2:
                return _ipv4(data, 4, ctx)
            if family in _NULL_INET6:
                return _ipv6(data, 4, ctx)
            counters["not_tcp"] += 1
            return None
        counters["unsupported_linktype"] += 1
        return None
    except (struct.error, IndexError, ValueError):     # ValueError: an address cut short
        counters["malformed"] += 1
        return None
