"""The wire of a synthetic capture: pcap files, TCP sessions, DCE/RPC PDUs.

The project's own sample captures (pcaps/generate.py) and the hostile-input
tests are framed with these. They write what Windows writes on the wire
(Ethernet II, IPv4, TCP with a handshake, MSS-sized segments, ACKs, a FIN
exchange; DCE/RPC v5.0 little-endian with fragmentation at max_xmit_frag), so
that tshark reads the result as it reads real traffic; tests check that it does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# The numbers the dissectors read are the ones written here: PDU types, flags, syntaxes.
from ..dissectors.dcerpc import (ALTER_CONTEXT, ALTER_CONTEXT_RESP, AUTH3, BIND, BIND_ACK, FAULT, PFC_FIRST_FRAG,
                                 PFC_LAST_FRAG, PFC_OBJECT_UUID, REQUEST, RESPONSE)
from ..spec.interfaces import TRANSFER_SYNTAXES
from ..dissectors.ndr import guid_bytes
from ..dissectors.tcp import ACK, FIN, PSH, RST, SYN  # noqa: F401 - RST: for wmiscope.synth's users


def _transfer_syntax(name: str) -> tuple[str, int]:
    """(UUID, major version) of a transfer syntax of the interface table, as a bind offers it."""
    t = next(t for t in TRANSFER_SYNTAXES if t["name"] == name)
    return t["uuid"], int(t["version"].split(".")[0])


NDR_SYNTAX = _transfer_syntax("NDR")
NDR64_SYNTAX = _transfer_syntax("NDR64")

_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")


class PcapWriter:
    """Classic little-endian microsecond pcap, Ethernet link type."""

    def __init__(self, path, linktype: int = 1, snaplen: int = 262144):
        self.f = open(path, "wb")
        self.f.write(_PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
        self.frames = 0

    def write(self, ts: float, data: bytes) -> int:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self.f.write(_PCAP_RECORD.pack(sec, usec, len(data), len(data)))
        self.f.write(data)
        self.frames += 1
        return self.frames

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _mac(ip: str) -> bytes:
    # A stable locally administered MAC per host, so each host keeps one address.
    return b"\x02\x00" + bytes(int(x) for x in ip.split("."))


def ipv4_tcp_frame(src: str, sport: int, dst: str, dport: int, seq: int, ack: int,
                   flags: int, payload: bytes = b"", ip_id: int = 0, window: int = 0xFFFF) -> bytes:
    """Ethernet II + IPv4 + TCP with correct IP and TCP checksums."""
    s_ip = bytes(int(x) for x in src.split("."))
    d_ip = bytes(int(x) for x in dst.split("."))
    tcp_hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                          5 << 4, flags, window, 0, 0)
    pseudo = s_ip + d_ip + struct.pack("!BBH", 0, 6, len(tcp_hdr) + len(payload))
    csum = _checksum(pseudo + tcp_hdr + payload)
    tcp_hdr = tcp_hdr[:16] + struct.pack("!H", csum) + tcp_hdr[18:]
    total = 20 + len(tcp_hdr) + len(payload)
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ip_id & 0xFFFF, 0x4000, 128, 6, 0, s_ip, d_ip)
    ip_hdr = ip_hdr[:10] + struct.pack("!H", _checksum(ip_hdr)) + ip_hdr[12:]
    return _mac(dst) + _mac(src) + b"\x08\x00" + ip_hdr + tcp_hdr + payload


@dataclass
class Clock:
    """Capture time: each frame a little later than the one before."""

    now: float = 1_700_000_000.0
    step: float = 0.0002

    def tick(self, dt: float | None = None) -> float:
        self.now += self.step if dt is None else dt
        return self.now


@dataclass
class TcpSession:
    """One TCP connection written into a PcapWriter, segment by segment."""

    writer: PcapWriter
    clock: Clock
    client: tuple[str, int]
    server: tuple[str, int]
    mss: int = 1460
    seq: list = field(default_factory=lambda: [0x1000_0000, 0x7000_0000])
    ip_id: list = field(default_factory=lambda: [0x100, 0x5000])

    def _ends(self, direction: int):
        return (self.client, self.server) if direction == 0 else (self.server, self.client)

    def _frame(self, direction: int, flags: int, payload: bytes = b"") -> int:
        (src, sport), (dst, dport) = self._ends(direction)
        self.ip_id[direction] += 1
        frame = ipv4_tcp_frame(src, sport, dst, dport, self.seq[direction], self.seq[1 - direction],
                               flags, payload, self.ip_id[direction])
        n = self.writer.write(self.clock.tick(), frame)
        self.seq[direction] += len(payload) + (1 if flags & (SYN | FIN) else 0)
        return n

    def open(self) -> None:
        (src, sport), (dst, dport) = self._ends(0)
        self.writer.write(self.clock.tick(), ipv4_tcp_frame(src, sport, dst, dport, self.seq[0], 0, SYN))
        self.seq[0] += 1
        self._frame(1, SYN | ACK)
        self._frame(0, ACK)

    def send(self, direction: int, data: bytes) -> list[int]:
        """Send data in MSS-sized segments; the peer ACKs every second one. Returns frame numbers."""
        frames = []
        for i in range(0, len(data), self.mss):
            chunk = data[i:i + self.mss]
            last = i + self.mss >= len(data)
            frames.append(self._frame(direction, ACK | (PSH if last else 0), chunk))
            if len(frames) % 2 == 0 and not last:
                self._frame(1 - direction, ACK)
        return frames

    def ack(self, direction: int) -> int:
        return self._frame(direction, ACK)

    def close(self) -> None:
        self._frame(0, FIN | ACK)
        self._frame(1, FIN | ACK)
        self._frame(0, ACK)


# --- DCE/RPC connection-oriented PDUs (C706 chapter 12, MS-RPCE 2.2.2) ---------

_COMMON = struct.Struct("<BBBB4sHHI")
_DREP_LE = b"\x10\x00\x00\x00"
_WHOLE = PFC_FIRST_FRAG | PFC_LAST_FRAG


def _pdu(ptype: int, flags: int, call_id: int, body: bytes) -> bytes:
    """A PDU without auth verifier (wmiscope.synth.sealing adds one where it needs it)."""
    return _COMMON.pack(5, 0, ptype, flags, _DREP_LE, 16 + len(body), 0, call_id) + body


def bind(call_id: int, contexts: list[tuple[int, str, tuple[int, int]]], *, alter: bool = False,
         assoc_group: int = 0, max_frag: int = 5840,
         transfer_syntaxes: list[tuple[str, int]] | None = None) -> bytes:
    """bind (11) or alter_context (14); contexts are (ctx_id, interface UUID, (major, minor))."""
    syntaxes = transfer_syntaxes or [NDR_SYNTAX]
    body = struct.pack("<HHIB3x", max_frag, max_frag, assoc_group, len(contexts))
    for ctx_id, iface, (major, minor) in contexts:
        body += struct.pack("<HBx", ctx_id, len(syntaxes)) + guid_bytes(iface) + struct.pack("<HH", major, minor)
        for ts_uuid, ts_ver in syntaxes:
            body += guid_bytes(ts_uuid) + struct.pack("<I", ts_ver)
    return _pdu(ALTER_CONTEXT if alter else BIND, _WHOLE, call_id, body)


def bind_ack(call_id: int, n_contexts: int, *, alter: bool = False, sec_addr: str = "",
             assoc_group: int = 0x1234, max_frag: int = 5840) -> bytes:
    """bind_ack (12) / alter_context_resp (15) accepting every context with NDR."""
    addr = sec_addr.encode("ascii") + b"\0" if sec_addr else b""
    body = struct.pack("<HHIH", max_frag, max_frag, assoc_group, len(addr)) + addr
    body += b"\0" * (-(16 + len(body)) % 4)   # the result list is 4-aligned from the PDU start
    body += struct.pack("<B3x", n_contexts)
    for _ in range(n_contexts):
        body += struct.pack("<HH", 0, 0) + guid_bytes(NDR_SYNTAX[0]) + struct.pack("<I", NDR_SYNTAX[1])
    return _pdu(ALTER_CONTEXT_RESP if alter else BIND_ACK, _WHOLE, call_id, body)


def _fragments(ptype: int, call_id: int, header: callable, stub: bytes, max_frag: int,
               extra_flags: int = 0) -> list[bytes]:
    """The stub cut at max_frag; header(alloc_hint) writes the PDU body's fixed part."""
    room = max_frag - 16 - len(header(0))
    pieces = [stub[i:i + room] for i in range(0, len(stub), room)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        flags = extra_flags
        if i == 0:
            flags |= PFC_FIRST_FRAG
        if i == len(pieces) - 1:
            flags |= PFC_LAST_FRAG
        out.append(_pdu(ptype, flags, call_id, header(len(stub) - i * room) + piece))
    return out


def request(call_id: int, ctx_id: int, opnum: int, stub: bytes, *, object_uuid: str | None = None,
            max_frag: int = 5840) -> list[bytes]:
    obj = guid_bytes(object_uuid) if object_uuid else b""
    flags = PFC_OBJECT_UUID if object_uuid else 0
    return _fragments(REQUEST, call_id, lambda hint: struct.pack("<IHH", hint, ctx_id, opnum) + obj,
                      stub, max_frag, flags)


def response(call_id: int, ctx_id: int, stub: bytes, *, max_frag: int = 5840) -> list[bytes]:
    return _fragments(RESPONSE, call_id, lambda hint: struct.pack("<IHBx", hint, ctx_id, 0), stub, max_frag)


def auth3(call_id: int) -> bytes:
    """rpc_auth_3 (16) before its sec_trailer: four octets of pad (MS-RPCE 2.2.2.10); the
    third leg of a handshake goes after them (wmiscope.synth.sealing adds it)."""
    return _pdu(AUTH3, _WHOLE, call_id, b"\x00" * 4)


def fault(call_id: int, ctx_id: int, status: int) -> bytes:
    return _pdu(FAULT, _WHOLE, call_id, struct.pack("<IHBxI4x", 0, ctx_id, 0, status))
