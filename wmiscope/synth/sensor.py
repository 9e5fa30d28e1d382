"""What sensors do to traffic: IP fragmentation and tunnels, applied to a capture.

`transform_capture(src, dst, *steps)` rewrites every Ethernet frame of a capture
through a chain of steps (each frame -> list of frames) and writes a classic pcap.
The steps build the headers from the RFCs, independently of the dissectors that
read them (dissectors/ipfrag.py, dissectors/encap.py), and tests check the result
with tshark before checking wmiscope on it:

* `fragment(mtu, order, duplicate)`: IPv4 (RFC 791) or IPv6 (RFC 8200 4.5)
  fragmentation of every IP packet larger than ``mtu``; fragments in order, in
  reverse, or with one repeated (what mirrored traffic shows).
* `to_ipv6()`: IPv4 -> IPv6 with the addresses embedded in 64:ff9b::/96 (RFC 6052),
  TCP checksums recomputed; to run IPv4 captures as IPv6 ones.
* `vxlan`, `geneve`, `gre_ether`, `gre_ip`, `erspan2`, `erspan3`, `mpls`, `qinq`,
  `ipip`: the tunnel headers of RFC 7348, RFC 8926, RFC 2784/2890, the ERSPAN draft,
  RFC 3032, IEEE 802.1ad and RFC 2003/4213 around each frame, outer addresses of a
  sensor (SENSOR -> COLLECTOR).

Frames that are not IP (ARP ...) pass through a step that needs IP unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import zlib
from typing import Callable, Iterable

from ..dissectors.capture import open_capture
from .wire import PcapWriter, _checksum

Step = Callable[[bytes], list[bytes]]

SENSOR = "192.0.2.10"
COLLECTOR = "192.0.2.20"
_MACS = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
NAT64 = ipaddress.IPv6Address("64:ff9b::")


def transform_capture(src, dst, *steps: Step) -> int:
    """Writes dst: every frame of src through the steps, in order. Returns frames written."""
    n = 0
    with PcapWriter(dst) as w:
        for _, ts, linktype, data in open_capture(src):
            if linktype != 1:
                raise ValueError(f"{src}: only Ethernet captures are transformed (link type {linktype})")
            frames = [data]
            for step in steps:
                frames = [out for f in frames for out in step(f)]
            for f in frames:
                w.write(ts, f)
                n += 1
    return n


# --- IP helpers ----------------------------------------------------------------------

def _ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ident: int = 0, frag: int = 0,
                 ttl: int = 64, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + payload_len, ident & 0xFFFF, frag, ttl, proto, 0,
                    src, dst) + options
    return h[:10] + struct.pack("!H", _checksum(h)) + h[12:]


def _ip_of(frame: bytes) -> tuple[int, int] | None:
    """(EtherType, offset of the IP header) of an untagged Ethernet frame carrying IP, else None."""
    if len(frame) < 34:
        return None
    etype = struct.unpack_from("!H", frame, 12)[0]
    if etype in (0x0800, 0x86DD):
        return etype, 14
    return None


def _ip_packet(frame: bytes) -> bytes | None:
    """The IP packet of an Ethernet frame, Ethernet padding cut off."""
    if _ip_of(frame) is None:
        return None
    pkt = frame[14:]
    # A length of 0 (segmentation offload on the capturing host) means "the rest of the frame".
    if pkt[0] >> 4 == 4:
        total = struct.unpack_from("!H", pkt, 2)[0]
        return pkt[:total] if total else pkt
    plen = struct.unpack_from("!H", pkt, 4)[0]
    return pkt[:40 + plen] if plen else pkt


def _outer_ipv4(proto: int, payload: bytes, ident: int) -> bytes:
    return _MACS + b"\x08\x00" + _ipv4_header(socket.inet_aton(SENSOR), socket.inet_aton(COLLECTOR), proto,
                                             len(payload), ident) + payload


class _Counter:
    def __init__(self, start: int):
        self.n = start

    def __call__(self) -> int:
        self.n = (self.n + 1) & 0xFFFFFFFF
        return self.n


# --- fragmentation ---------------------------------------------------------------------

def fragment(mtu: int = 576, order: str = "forward", duplicate: bool = False) -> Step:
    """IP fragmentation of packets longer than mtu (the IP packet's length).

    order: "forward", or "reverse" (the last fragment first, as some stacks send);
    duplicate: the first fragment once more at the end.
    """
    ident = _Counter(0x4000)

    def step(frame: bytes) -> list[bytes]:
        pkt = _ip_packet(frame)
        if pkt is None or len(pkt) <= mtu:
            return [frame]
        head = frame[:14]
        if pkt[0] >> 4 == 4:
            parts = _fragment_v4(pkt, mtu)
        else:
            parts = _fragment_v6(pkt, mtu, ident())
        if order == "reverse":
            parts.reverse()
        if duplicate:
            parts.append(parts[0])
        return [head + p for p in parts]
    return step


def _fragment_v4(pkt: bytes, mtu: int) -> list[bytes]:
    ihl = (pkt[0] & 0x0F) * 4
    ident = struct.unpack_from("!H", pkt, 4)[0]
    proto = pkt[9]
    payload = pkt[ihl:]
    chunk = (mtu - ihl) & ~7
    out = []
    for off in range(0, len(payload), chunk):
        piece = payload[off:off + chunk]
        more = 0x2000 if off + chunk < len(payload) else 0
        out.append(_ipv4_header(pkt[12:16], pkt[16:20], proto, len(piece), ident, more | (off >> 3),
                                pkt[8], pkt[20:ihl]) + piece)
    return out


def _fragment_v6(pkt: bytes, mtu: int, ident: int) -> list[bytes]:
    # The whole payload is the fragmentable part: the packets transformed here carry
    # no hop-by-hop or routing header.
    nh = pkt[6]
    payload = pkt[40:]
    chunk = (mtu - 48) & ~7
    out = []
    for off in range(0, len(payload), chunk):
        piece = payload[off:off + chunk]
        more = 1 if off + chunk < len(payload) else 0
        fh = struct.pack("!BBHI", nh, 0, off | more, ident)
        out.append(pkt[:4] + struct.pack("!HBB", len(fh) + len(piece), 44, pkt[7]) + pkt[8:40] + fh + piece)
    return out


# --- IPv4 -> IPv6 -------------------------------------------------------------------------

def nat64(addr: str) -> str:
    """The IPv6 address an IPv4 address becomes under `to_ipv6` (RFC 6052 well-known prefix)."""
    return str(ipaddress.IPv6Address(int(NAT64) | int(ipaddress.IPv4Address(addr))))


def to_ipv6() -> Step:
    def step(frame: bytes) -> list[bytes]:
        pkt = _ip_packet(frame)
        if pkt is None or pkt[0] >> 4 != 4:
            return [frame]
        ihl = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        src = (int(NAT64) | int.from_bytes(pkt[12:16], "big")).to_bytes(16, "big")
        dst = (int(NAT64) | int.from_bytes(pkt[16:20], "big")).to_bytes(16, "big")
        payload = bytearray(pkt[ihl:])
        if proto == 6 and len(payload) >= 20:
            payload[16:18] = b"\0\0"
            pseudo = src + dst + struct.pack("!IxxxB", len(payload), 6)
            payload[16:18] = struct.pack("!H", _checksum(pseudo + bytes(payload)))
        ip6 = struct.pack("!IHBB", 0x60000000, len(payload), proto, pkt[8]) + src + dst
        return [frame[:12] + b"\x86\xdd" + ip6 + bytes(payload)]
    return step


# --- tunnels ------------------------------------------------------------------------------

def vxlan(vni: int = 4242) -> Step:
    ident = _Counter(0)

    def step(frame: bytes) -> list[bytes]:
        udp_len = 8 + 8 + len(frame)
        udp = struct.pack("!HHHH", 49152 + (zlib.crc32(frame[:12]) & 0x3FFF), 4789, udp_len, 0)
        return [_outer_ipv4(17, udp + struct.pack("!BxxxI", 0x08, vni << 8) + frame, ident())]
    return step


def geneve(vni: int = 77) -> Step:
    ident = _Counter(0)

    def step(frame: bytes) -> list[bytes]:
        option = struct.pack("!HBB", 0x0101, 0x01, 1) + b"\0\0\0\1"    # one 4-octet option
        hdr = struct.pack("!BBHI", len(option) // 4, 0, 0x6558, vni << 8) + option
        udp = struct.pack("!HHHH", 50000, 6081, 8 + len(hdr) + len(frame), 0)
        return [_outer_ipv4(17, udp + hdr + frame, ident())]
    return step


def gre_ether(key: int | None = 0x1234, seq: bool = True, checksum: bool = False) -> Step:
    """GRE with transparent Ethernet bridging (0x6558), with the optional fields asked for."""
    ident = _Counter(0)
    counter = _Counter(0)

    def step(frame: bytes) -> list[bytes]:
        return [_outer_ipv4(47, _gre(0x6558, frame, key, counter() if seq else None, checksum), ident())]
    return step


def gre_ip(key: int | None = None) -> Step:
    """GRE carrying the IP packet itself (protocol 0x0800 or 0x86DD)."""
    ident = _Counter(0)

    def step(frame: bytes) -> list[bytes]:
        ip = _ip_of(frame)
        if ip is None:
            return [frame]
        return [_outer_ipv4(47, _gre(ip[0], _ip_packet(frame), key, None, False), ident())]
    return step


def _gre(ptype: int, payload: bytes, key: int | None, seq: int | None, checksum: bool) -> bytes:
    flags = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    opts = b""
    if checksum:
        opts += b"\0\0\0\0"
    if key is not None:
        opts += struct.pack("!I", key)
    if seq is not None:
        opts += struct.pack("!I", seq)
    hdr = struct.pack("!HH", flags, ptype) + opts
    if checksum:
        c = _checksum(hdr + payload)
        hdr = hdr[:4] + struct.pack("!H", c) + hdr[6:]
    return hdr + payload


def erspan2(session: int = 100) -> Step:
    """ERSPAN type II: GRE (S flag, 0x88BE) + 8-octet header, version 1."""
    ident = _Counter(0)
    counter = _Counter(0)

    def step(frame: bytes) -> list[bytes]:
        hdr = struct.pack("!HHI", (1 << 12) | 0, session & 0x3FF, 0)
        return [_outer_ipv4(47, _gre(0x88BE, hdr + frame, None, counter(), False), ident())]
    return step


def erspan3(session: int = 200, hw_id: int = 5) -> Step:
    """ERSPAN type III: GRE (S flag, 0x22EB) + 12-octet header, version 2, frame type 0 (Ethernet)."""
    ident = _Counter(0)
    counter = _Counter(0)

    def step(frame: bytes) -> list[bytes]:
        hdr = struct.pack("!HHIHH", (2 << 12) | 0, session & 0x3FF, counter() * 100, 0,
                          (0 << 10) | ((hw_id & 0x3F) << 4))
        return [_outer_ipv4(47, _gre(0x22EB, hdr + frame, None, counter.n, False), ident())]
    return step


def mpls(labels: Iterable[int] = (1000, 2000), ethernet: bool = False) -> Step:
    """An MPLS label stack on the link: over the IP packet (L3VPN), or over the whole
    Ethernet frame with a pseudowire control word (RFC 4448) when ``ethernet``."""
    labels = list(labels)

    def step(frame: bytes) -> list[bytes]:
        if ethernet:
            inner = b"\0\0\0\0" + frame
        else:
            inner = _ip_packet(frame)
            if inner is None:
                return [frame]
        stack = b"".join(struct.pack("!I", (label << 12) | (0x100 if i == len(labels) - 1 else 0) | 64)
                         for i, label in enumerate(labels))
        return [_MACS + b"\x88\x47" + stack + inner]
    return step


def qinq(outer: int = 100, inner: int = 5, outer_type: int = 0x88A8) -> Step:
    """802.1ad: a service tag (0x88A8, or the old 0x9100) over an 802.1Q customer tag."""
    def step(frame: bytes) -> list[bytes]:
        return [frame[:12] + struct.pack("!HHHH", outer_type, outer, 0x8100, inner) + frame[12:]]
    return step


def ipip() -> Step:
    """IPv4-in-IPv4 (protocol 4, RFC 2003) or IPv6-in-IPv4 (41, RFC 4213), by what the frame carries."""
    ident = _Counter(0)

    def step(frame: bytes) -> list[bytes]:
        ip = _ip_of(frame)
        if ip is None:
            return [frame]
        return [_outer_ipv4(4 if ip[0] == 0x0800 else 41, _ip_packet(frame), ident())]
    return step


# The transformations the tests and `pcaps/` use, by name: each a list of steps.
SENSOR_TRANSFORMS: dict[str, Callable[[], list[Step]]] = {
    "frag4": lambda: [fragment(576)],
    "frag4-reverse-dup": lambda: [fragment(296, order="reverse", duplicate=True)],
    "frag6": lambda: [to_ipv6(), fragment(600)],
    "vxlan": lambda: [vxlan()],
    "geneve": lambda: [geneve()],
    "gre-ether": lambda: [gre_ether()],
    "gre-ip": lambda: [gre_ip(key=7)],
    "erspan2": lambda: [erspan2()],
    "erspan3": lambda: [erspan3()],
    "mpls": lambda: [mpls()],
    "mpls-ether": lambda: [mpls((16, 17, 18), ethernet=True)],
    "qinq": lambda: [qinq()],
    "ipip": lambda: [ipip()],
    "ip6ip": lambda: [to_ipv6(), ipip()],
    "vxlan-fragmented": lambda: [vxlan(), fragment(1000)],
    "erspan3-qinq-ipv6": lambda: [to_ipv6(), qinq(outer_type=0x9100), erspan3()],
}


def steps(name: str) -> list[Step]:
    """Fresh steps (counters restart) of a named transformation."""
    return SENSOR_TRANSFORMS[name]()
