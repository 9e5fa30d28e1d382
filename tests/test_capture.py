"""Capture files and link layers: what open_capture and tcp_segment make of them.

Real captures are checked frame by frame against tshark; every format variant
and link type is built here as a small file, and the multi-link-type pcapng is
read by tshark too, so the builders below are checked as well.
"""

from __future__ import annotations

import gzip
import io
import socket
import struct
import subprocess
import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tshark_util import CAPTURES, have_tshark
from wmiscope.dissectors import capture
from wmiscope.dissectors.capture import (
    CaptureFormatError, TcpSegment, live_capture, open_capture, tcp_segment,
)

REAL = sorted(p.name for p in CAPTURES.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
needs_tshark = pytest.mark.skipif(not have_tshark(), reason="tshark not installed")


# --- builders ---------------------------------------------------------------------

def tcp_header(sport, dport, seq, ack=0, flags=0x18, options=b""):
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 8192, 0, 0) + options


def ipv4(src, dst, payload, proto=6, options=b"", frag=0x4000):
    ihl = (20 + len(options)) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 1, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + options + payload


def ipv6(src, dst, payload, extensions=(), nh=6):
    """extensions: (header type, body) pairs in order; body padded to the header's units."""
    chain = b""
    types = [t for t, _ in extensions] + [nh]
    for i, (t, body) in enumerate(extensions):
        nxt = types[i + 1]
        if t == 44:                         # fragment header: fixed 8 octets
            chain += struct.pack("!BB", nxt, 0) + body
        else:
            total = 2 + len(body)
            assert total % 8 == 0
            chain += struct.pack("!BB", nxt, total // 8 - 1) + body
    first = types[0]
    return (struct.pack("!IHBB", 0x60000000, len(chain) + len(payload), first, 64)
            + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + chain + payload)


def ether(payload, etype=0x0800, tags=()):
    head = b"\x00\x11\x22\x33\x44\x55\x00\x66\x77\x88\x99\xaa"
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", etype) + payload


def sll(payload, proto=0x0800):
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x00\x11\x22\x33\x44\x55\0\0", proto) + payload


def sll2(payload, proto=0x0800):
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, b"\x00\x11\x22\x33\x44\x55\0\0") + payload


def null(payload, family, bo="<"):
    return struct.pack(bo + "I", family) + payload


def pcap_bytes(frames, linktype=1, *, bo="<", nsec=False):
    """frames: (epoch seconds, frame bytes) pairs."""
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for ts, data in frames:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nsec else 1e6))
        out.append(struct.pack(bo + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def block(bo, btype, body):
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(bo + "II", btype, total) + body + struct.pack(bo + "I", total)


def option(bo, code, value):
    return struct.pack(bo + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(bo):
    return block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(bo, linktype, tsresol=None, tsoffset=None, snaplen=0):
    opts = b""
    if tsresol is not None:
        opts += option(bo, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += option(bo, 14, struct.pack(bo + "q", tsoffset))
    if opts:
        opts += option(bo, 0, b"")
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def epb(bo, ifid, ticks, data):
    return block(bo, 6, struct.pack(bo + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF,
                                     len(data), len(data)) + data)


def spb(bo, data):
    return block(bo, 3, struct.pack(bo + "I", len(data)) + data)


def packet_block(bo, ifid, ticks, data):
    return block(bo, 2, struct.pack(bo + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                     len(data), len(data)) + data)


def tcp_frame(sport=49700, dport=135, seq=1000, payload=b"hello", src="10.1.2.3", dst="10.1.2.4"):
    return ether(ipv4(src, dst, tcp_header(sport, dport, seq) + payload))


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def frames_of(path, **kw):
    errors = []
    frames = list(open_capture(path, errors=errors.append, **kw))
    return frames, errors


def tshark_fields(path, *fields):
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=f"]
                         + [x for f in fields for x in ("-e", f)],
                         capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines()]


# --- the real captures ------------------------------------------------------------------

@needs_tshark
@pytest.mark.parametrize("name", REAL)
def test_real_capture_frames_match_tshark(name):
    rows = tshark_fields(CAPTURES / name, "frame.number", "frame.time_epoch", "frame.cap_len")
    frames, errors = frames_of(CAPTURES / name)
    assert [f[0] for f in frames] == [int(r[0]) for r in rows]
    assert [len(f[3]) for f in frames] == [int(r[2]) for r in rows]
    for f, r in zip(frames, rows):
        assert abs(f[1] - float(r[1])) < 1e-6
    assert all(f[2] == 1 for f in frames)      # all Ethernet
    # Only the Covenant capture is cut short (tshark says so too); it ends in one record.
    if name.startswith("covenant"):
        assert len(frames) == 178
        assert len(errors) == 1 and errors[0].stage == "capture" and errors[0].frame == 179
        assert "ends inside a record header" in errors[0].reason
    else:
        assert errors == []


@needs_tshark
@pytest.mark.parametrize("name", ["wmiexecpro-create-start-service.pcap", "wmimplant.pcap"])
def test_real_capture_tcp_headers_match_tshark(name):
    rows = tshark_fields(CAPTURES / name, "frame.number", "ip.src", "tcp.srcport", "ip.dst",
                         "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "tcp.len")
    expected = {int(r[0]): (r[1], int(r[2]), r[3], int(r[4]), int(r[5]), int(r[6]), int(r[7], 16), int(r[8]))
                for r in rows if r[2]}
    got = {}
    for frame, _, linktype, data in open_capture(CAPTURES / name):
        seg = tcp_segment(linktype, data)
        if seg is not None:
            got[frame] = seg[:7] + (len(seg.payload),)
    assert got == expected
    assert len(got) > 200


# --- formats ----------------------------------------------------------------------

def test_pcap_byte_orders_and_nanoseconds(tmp_path):
    frames = [(1700000000.123456, tcp_frame(seq=1)), (1700000001.5, tcp_frame(seq=6))]
    for bo in "<>":
        got, errors = frames_of(write(tmp_path, f"u{bo == '<'}.pcap", pcap_bytes(frames, bo=bo)))
        assert [(n, round(ts, 6), lt, d) for n, ts, lt, d in got] == \
            [(1, 1700000000.123456, 1, frames[0][1]), (2, 1700000001.5, 1, frames[1][1])]
        assert errors == []
    nframes = [(1700000000.123456789, tcp_frame())]
    got, _ = frames_of(write(tmp_path, "n.pcap", pcap_bytes(nframes, bo=">", nsec=True)))
    assert abs(got[0][1] - 1700000000.123456789) < 1e-7
    assert round(got[0][1] * 1e9) % 1000 != 0       # sub-microsecond digits survive


def test_gzip_detected_by_magic_not_name(tmp_path):
    data = pcap_bytes([(1.0, tcp_frame(seq=i)) for i in range(50)])
    p = write(tmp_path, "plain-name.pcap", gzip.compress(data))
    reader = open_capture(p)
    frames = list(reader)
    assert reader.compressed and reader.format == "pcap"
    assert len(frames) == 50 and frames[-1][3] == tcp_frame(seq=49)
    ng = shb("<") + idb("<", 1) + epb("<", 0, 5_000_000, tcp_frame())
    reader = open_capture(write(tmp_path, "x.bin", gzip.compress(ng)))
    assert [f[0] for f in reader] == [1] and reader.format == "pcapng"


def test_pcapng_interfaces_sections_and_block_kinds(tmp_path):
    raw = ipv4("192.0.2.1", "192.0.2.2", tcp_header(1234, 135, 77) + b"raw")
    eth = tcp_frame(seq=5)
    data = (
        shb(">")                                            # big-endian section
        + idb(">", 1)                                       # microseconds (default)
        + idb(">", 101, tsresol=9, tsoffset=100)            # raw IP, nanoseconds, +100 s
        + block(">", 0x80000001, b"custom data")            # unknown block: skipped
        + epb(">", 0, 1_700_000_000_250_000, eth)
        + epb(">", 1, 1_600_000_000_000_000_001, raw)
        + spb(">", eth)                                     # no timestamp: the previous one
        + block(">", 5, b"\0" * 12)                         # interface statistics: skipped
        + shb("<")                                          # second section, little-endian
        + idb("<", 228, tsresol=0x80 | 10)                  # raw IPv4, 1/1024 s
        + packet_block("<", 0, 1024 * 1_700_000_000 + 512, raw)
    )
    p = write(tmp_path, "multi.pcapng", data)
    frames, errors = frames_of(p)
    assert errors == []
    assert [(n, lt) for n, _, lt, _ in frames] == [(1, 1), (2, 101), (3, 1), (4, 228)]
    assert frames[0][1] == pytest.approx(1_700_000_000.25)
    assert frames[1][1] == pytest.approx(1_600_000_100.000000001, abs=1e-6)
    assert frames[2][1] == frames[1][1]
    assert frames[3][1] == pytest.approx(1_700_000_000.5)
    assert frames[1][3] == raw and frames[2][3] == eth
    assert tcp_segment(frames[1][2], frames[1][3]).payload == b"raw"
    if have_tshark():
        rows = tshark_fields(p, "frame.number", "tcp.seq_raw", "frame.time_epoch")
        assert [int(r[1]) for r in rows] == [5, 77, 5, 77]
        assert float(rows[3][2]) == pytest.approx(frames[3][1], abs=1e-6)


def test_streaming_across_chunk_boundaries(tmp_path, monkeypatch):
    frames = [(1.0 + i, tcp_frame(seq=i, payload=bytes([i % 256]) * (i * 7 % 1500))) for i in range(300)]
    pcap = write(tmp_path, "a.pcap", pcap_bytes(frames))
    ng = write(tmp_path, "a.pcapng", shb("<") + idb("<", 1) + b"".join(
        epb("<", 0, int(ts * 1e6), d) for ts, d in frames))
    expected = [d for _, d in frames]
    monkeypatch.setattr(capture, "CHUNK", 97)       # every record straddles reads
    for p in (pcap, ng):
        got, errors = frames_of(p)
        assert [d for *_, d in got] == expected and errors == []


def test_memory_stays_bounded_on_a_large_file(tmp_path):
    frame = tcp_frame(payload=b"x" * 1400)
    rec = struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame
    p = tmp_path / "big.pcap"
    with open(p, "wb") as f:
        f.write(pcap_bytes([]))
        for _ in range(16):
            f.write(rec * 1000)                     # ~23 MB in all
    tracemalloc.start()
    try:
        n = sum(1 for _ in open_capture(p))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 16000
    assert peak < 6 << 20


def test_reads_a_pipe_like_stream():
    data = gzip.compress(pcap_bytes([(2.0, tcp_frame())] * 3))

    class Pipe(io.RawIOBase):               # no seek, short reads
        def __init__(self):
            self.buf = io.BytesIO(data)

        def readable(self):
            return True

        def read(self, n=-1):
            return self.buf.read(min(n, 5) if n and n > 0 else 5)

    assert [f[0] for f in open_capture(Pipe())] == [1, 2, 3]


# --- damaged files ------------------------------------------------------------------

@pytest.mark.parametrize("cut", [5, 16 + 24 + 10])     # inside a record header / a record's data
def test_truncated_pcap_ends_with_one_error(tmp_path, cut):
    full = pcap_bytes([(1.0, tcp_frame(seq=1)), (2.0, tcp_frame(seq=2))])
    keep = 24 + 16 + len(tcp_frame()) + cut
    frames, errors = frames_of(write(tmp_path, "t.pcap", full[:keep]))
    assert [f[0] for f in frames] == [1]
    assert len(errors) == 1
    assert errors[0].stage == "capture" and errors[0].frame == 2
    assert errors[0].offset == 24 + 16 + len(tcp_frame())


def test_truncated_and_corrupt_pcapng(tmp_path):
    good = shb("<") + idb("<", 1) + epb("<", 0, 1, tcp_frame())
    frames, errors = frames_of(write(tmp_path, "cut.pcapng", good + epb("<", 0, 2, tcp_frame())[:-9]))
    assert len(frames) == 1 and len(errors) == 1 and "ends inside a block" in errors[0].reason

    bad_len = good + struct.pack("<II", 6, 7) + b"\0" * 40
    frames, errors = frames_of(write(tmp_path, "len.pcapng", bad_len))
    assert len(frames) == 1 and "impossible total length 7" in errors[0].reason

    b = bytearray(epb("<", 0, 2, tcp_frame()))
    b[-4:] = struct.pack("<I", len(b) + 4)
    frames, errors = frames_of(write(tmp_path, "trail.pcapng", good + bytes(b)))
    assert len(frames) == 1 and "trailing" in errors[0].reason

    frames, errors = frames_of(write(tmp_path, "noif.pcapng", shb("<") + epb("<", 3, 1, tcp_frame())))
    assert frames == [] and "interface 3 not described" in errors[0].reason


def test_damaged_gzip_keeps_frames_before_the_damage(tmp_path):
    data = pcap_bytes([(float(i), tcp_frame(seq=i, payload=bytes(range(256)) * 4)) for i in range(2000)])
    z = gzip.compress(data)
    frames, errors = frames_of(write(tmp_path, "cut.pcap.gz", z[:len(z) // 2]))
    assert 0 < len(frames) < 2000
    assert [f[0] for f in frames] == list(range(1, len(frames) + 1))
    assert len(errors) == 1 and "cut short" in errors[0].reason


def test_not_a_capture(tmp_path):
    with pytest.raises(CaptureFormatError):
        open_capture(write(tmp_path, "x.txt", b"hello world, no capture here"))
    with pytest.raises(CaptureFormatError):
        open_capture(write(tmp_path, "empty.pcap", b""))


# --- link layers, IP, TCP ----------------------------------------------------------------

V4 = ipv4("10.0.0.1", "10.0.0.2", tcp_header(50000, 135, 0xDEADBEEF, 7, 0x18) + b"payload")
V6 = ipv6("fe80::1", "2001:db8::2", tcp_header(50000, 135, 0xDEADBEEF, 7, 0x18) + b"payload")

LINK_CASES = [
    ("ethernet", 1, ether(V4), "10.0.0.1"),
    ("ethernet-ipv6", 1, ether(V6, 0x86DD), "fe80::1"),
    ("802.1q", 1, ether(V4, tags=[(0x8100, 5)]), "10.0.0.1"),
    ("802.1ad+802.1q", 1, ether(V4, tags=[(0x88A8, 100), (0x8100, 5)]), "10.0.0.1"),
    ("qinq-9100", 1, ether(V6, 0x86DD, tags=[(0x9100, 7), (0x8100, 5)]), "fe80::1"),
    ("sll", 113, sll(V4), "10.0.0.1"),
    ("sll-ipv6", 113, sll(V6, 0x86DD), "fe80::1"),
    ("sll2", 276, sll2(V4), "10.0.0.1"),
    ("raw-101-v4", 101, V4, "10.0.0.1"),
    ("raw-101-v6", 101, V6, "fe80::1"),
    ("raw-12", 12, V4, "10.0.0.1"),
    ("raw-14", 14, V6, "fe80::1"),
    ("ipv4-228", 228, V4, "10.0.0.1"),
    ("ipv6-229", 229, V6, "fe80::1"),
    ("null-le", 0, null(V4, 2, "<"), "10.0.0.1"),
    ("null-be", 0, null(V4, 2, ">"), "10.0.0.1"),
    ("null-inet6-24", 0, null(V6, 24, "<"), "fe80::1"),
    ("null-inet6-28", 0, null(V6, 28, "<"), "fe80::1"),
    ("loop-inet6-30", 108, null(V6, 30, ">"), "fe80::1"),
]


@pytest.mark.parametrize("name,linktype,frame,src", LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_link_types(name, linktype, frame, src):
    seg = tcp_segment(linktype, frame)
    assert seg == TcpSegment(src, 50000, "2001:db8::2" if ":" in src else "10.0.0.2", 135,
                             0xDEADBEEF, 7, 0x18, b"payload")


def test_every_link_type_in_one_pcapng_and_tshark_agrees(tmp_path):
    """One interface per case; open_capture hands each frame its interface's link type."""
    ifaces = b"".join(idb("<", lt) for _, lt, _, _ in LINK_CASES)
    packets = b"".join(epb("<", i, 1_000_000 * (i + 1), f) for i, (_, _, f, _) in enumerate(LINK_CASES))
    p = write(tmp_path, "links.pcapng", shb("<") + ifaces + packets)
    frames, errors = frames_of(p)
    assert errors == [] and [f[2] for f in frames] == [c[1] for c in LINK_CASES]
    segs = [tcp_segment(lt, data) for _, _, lt, data in frames]
    assert all(s is not None and s.payload == b"payload" for s in segs)
    if not have_tshark():
        return
    rows = tshark_fields(p, "frame.number", "tcp.srcport", "tcp.seq_raw", "tcp.len", "ip.src", "ipv6.src")
    assert len(rows) == len(LINK_CASES)
    for (name, *_), seg, row in zip(LINK_CASES, segs, rows):
        assert row[1:4] == [str(seg.sport), str(seg.seq), str(len(seg.payload))], name
        assert (row[4] or row[5]) == seg.src, name


def test_ipv6_extension_headers_are_skipped():
    inner = tcp_header(1025, 135, 9, 0, 0x10) + b"x"
    pkt = ipv6("2001:db8::1", "2001:db8:0:0:1:0:0:1", inner,
               extensions=[(0, b"\x01\x04\0\0\0\0"), (43, b"\0\0\0\0\0\0"),
                           (60, b"\x01\x0c" + b"\0" * 12)])
    seg = tcp_segment(229, pkt)
    assert seg.src == "2001:db8::1" and seg.dst == "2001:db8::1:0:0:1" and seg.payload == b"x"
    first = ipv6("::1", "::2", inner, extensions=[(44, struct.pack("!HI", 0x0001, 1))])
    assert tcp_segment(229, first).sport == 1025
    later = ipv6("::1", "::2", b"\0" * 16, extensions=[(44, struct.pack("!HI", 185 << 3, 1))])
    assert tcp_segment(229, later) is None


def test_ipv4_options_padding_fragments_and_other_protocols():
    capture.reset_counters()
    opts = ipv4("10.0.0.1", "10.0.0.2", tcp_header(1, 2, 3) + b"abc", options=b"\x01\x01\x01\x00")
    assert tcp_segment(1, ether(opts)).payload == b"abc"
    short = ether(ipv4("10.0.0.1", "10.0.0.2", tcp_header(1, 2, 3)))
    assert tcp_segment(1, short + b"\0" * 6).payload == b""          # Ethernet padding trimmed
    later = ipv4("10.0.0.1", "10.0.0.2", b"\0" * 24, frag=0x2000 | 10)
    assert tcp_segment(1, ether(later)) is None
    udp = ipv4("10.0.0.1", "10.0.0.2", b"\0" * 8, proto=17)
    assert tcp_segment(1, ether(udp)) is None
    assert tcp_segment(1, ether(b"\0" * 28, 0x0806)) is None                 # ARP
    bad = bytearray(ether(V4))
    bad[14 + 20 + 12] = 0x30                                                # data offset 3 words
    assert tcp_segment(1, bytes(bad)) is None
    assert tcp_segment(1, ether(V4)[:40]) is None                           # cut inside TCP
    assert tcp_segment(147, V4) is None
    c = capture.reset_counters()
    assert c["fragments"] == 1 and c["not_tcp"] == 2 and c["malformed"] == 2
    assert c["unsupported_linktype"] == 1


def test_snaplen_cut_frame_yields_what_it_holds():
    capture.reset_counters()
    frame = ether(ipv4("10.0.0.1", "10.0.0.2", tcp_header(1, 2, 3) + b"0123456789"))
    assert tcp_segment(1, frame[:-4]).payload == b"012345"
    assert capture.reset_counters()["truncated"] == 1


# --- live -----------------------------------------------------------------------------

def loopback_exchange(srv: socket.socket, port: int) -> None:
    """A TCP connection to the listening srv on 127.0.0.1:port: handshake, b"ping", close."""
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = srv.accept()
    c.sendall(b"ping")
    assert s.recv(4) == b"ping"
    c.close()
    s.close()


def test_live_capture_on_loopback():
    """Real capture through scapy's packet socket; needs root (skipped otherwise)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        try:
            frames = live_capture("lo", f"tcp port {port}", count=4)
        except OSError as exc:
            pytest.skip(f"no packet socket here: {exc}")
        got = []
        done = threading.Event()

        def grab():
            try:
                got.extend(frames)
            finally:
                done.set()

        threading.Thread(target=grab, daemon=True).start()
        loopback_exchange(srv, port)
        assert done.wait(10), "the four packets of the exchange were not captured"
    finally:
        srv.close()
    segs = [tcp_segment(lt, d) for _, _, lt, d in got]
    assert [n for n, *_ in got] == [1, 2, 3, 4]
    assert segs[0].flags == 0x02 and segs[0].dport == port                 # each packet once
    assert segs[1].flags == 0x12 and segs[3].payload == b"ping"


# --- hostile input ---------------------------------------------------------------------
SAMPLE_NG = shb("<") + idb("<", 1, tsresol=9) + idb("<", 229) + b"".join(
    epb("<", i % 2, 10 ** 9 * i, tcp_frame(seq=i) if i % 2 == 0 else V6) for i in range(6)) + spb("<", V4)
SAMPLE_PCAP = pcap_bytes([(float(i), tcp_frame(seq=i)) for i in range(6)])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([SAMPLE_NG, SAMPLE_PCAP]), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                                           max_size=8), st.integers(0, 10 ** 6))
def test_damaged_files_never_raise(sample, flips, cut):
    data = bytearray(sample)
    for where, value in flips:
        data[where % len(data)] = value
    data = bytes(data[:max(4, cut % (len(data) + 1))])
    try:
        reader = open_capture(io.BytesIO(data))
    except CaptureFormatError:
        return
    frames = list(reader)
    assert len(frames) <= 7 and len(reader.errors) <= 2     # a damaged block, clamped timestamps
    for _, ts, lt, frame in frames:
        tcp_segment(lt, frame)          # never raises


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 113, 276, 101, 228, 229, 0, 108]), st.binary(max_size=120))
def test_tcp_segment_never_raises(linktype, data):
    seg = tcp_segment(linktype, data)
    assert seg is None or isinstance(seg, TcpSegment)
