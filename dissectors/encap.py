"""Tunnel headers sensors wrap traffic in: what is inside, and where it starts.

Each function reads one encapsulation header and returns ``(inner, offset, layer)``:
``inner`` one of "ether", "ipv4", "ipv6", "mpls" (what follows), ``offset`` where it
starts in the buffer, ``layer`` a small dict naming the tunnel for the records (the
caller adds the outer IP addresses). None when the header is not one we open (then
the packet counts as not TCP). No state, no I/O: capture.py dispatches on ``inner``
and loops until it reaches TCP, so tunnels nest as they come (ERSPAN in GRE in
IPv4 in VXLAN in ...), up to ``MAX_DEPTH`` layers.

* VXLAN, RFC 7348: UDP destination port 4789 (8472, the Linux default, too), 8-octet
  header, I flag, 24-bit VNI, then Ethernet. AWS VPC Traffic Mirroring uses it.
* Geneve, RFC 8926: UDP 6081, options of ``opt_len`` 4-octet words, then the payload
  named by its protocol type (Ethernet 0x6558, IPv4, IPv6).
* GRE, RFC 2784 / RFC 2890: C, K and S flags each add four octets (checksum and
  reserved, key, sequence number); version 0 only (version 1 is PPTP's PPP carrier).
  Protocol types: 0x6558 transparent Ethernet bridging, 0x0800 IPv4, 0x86DD IPv6,
  0x8847/0x8848 MPLS, 0x88BE ERSPAN type I (no S flag, Ethernet follows at once) and
  II, 0x22EB ERSPAN type III.
* ERSPAN (draft-foschiano-erspan): type II has an 8-octet header (version 1, VLAN,
  session id, index); type III a 12-octet one (version 2, session id, timestamp, frame
  type, O flag: an 8-octet platform-specific subheader follows). Only Ethernet frame
  type (0) is opened.
* MPLS, RFC 3032: 4-octet label stack entries until the bottom-of-stack bit; the
  payload is guessed by its first nibble, as Wireshark and Zeek do: 4 IPv4, 6 IPv6,
  0 a pseudowire control word (RFC 4385) and then Ethernet, anything else Ethernet.
"""

from __future__ import annotations

import struct

__all__ = ["MAX_DEPTH", "VXLAN_PORTS", "GENEVE_PORT", "UDP_TUNNEL_PORTS", "udp", "gre", "mpls"]

# Tunnels inside tunnels deeper than this are refused: a crafted packet could
# otherwise nest until the frame ends, at Python's cost per layer.
MAX_DEPTH = 8

VXLAN_PORTS = frozenset((4789, 8472))
GENEVE_PORT = 6081
UDP_TUNNEL_PORTS = VXLAN_PORTS | {GENEVE_PORT}

_ETHER_TYPES = {0x6558: "ether", 0x0800: "ipv4", 0x86DD: "ipv6", 0x8847: "mpls", 0x8848: "mpls"}
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_UDP = struct.Struct("!HH")

ERSPAN_II = 0x88BE
ERSPAN_III = 0x22EB


def udp(data: bytes, off: int, end: int):
    """A UDP datagram at off: VXLAN or Geneve inside, or None."""
    if off + 16 > end:
        return None
    sport, dport = _UDP.unpack_from(data, off)
    h = off + 8
    if dport in VXLAN_PORTS:
        flags = data[h]
        if not flags & 0x08:            # I flag: the VNI is valid
            return None
        return "ether", h + 8, {"proto": "vxlan", "vni": _U32.unpack_from(data, h + 4)[0] >> 8}
    if dport == GENEVE_PORT:
        ver_opt, ptype = data[h], _U16.unpack_from(data, h + 2)[0]
        inner = _ETHER_TYPES.get(ptype)
        if ver_opt >> 6 or inner is None:
            return None
        return inner, h + 8 + ((ver_opt & 0x3F) << 2), {"proto": "geneve",
                                                         "vni": _U32.unpack_from(data, h + 4)[0] >> 8}
    return None


def gre(data: bytes, off: int, end: int):
    """A GRE header at off (RFC 2784/2890), with ERSPAN behind it when its protocol says so."""
    flags, ptype = _U16.unpack_from(data, off)[0], _U16.unpack_from(data, off + 2)[0]
    if flags & 0x7:                     # version: only 0 carries these payloads
        return None
    p = off + 4
    layer = {"proto": "gre"}
    if flags & 0x8000:                  # checksum present (with 2 reserved octets)
        p += 4
    if flags & 0x2000:
        layer["key"] = _U32.unpack_from(data, p)[0]
        p += 4
    if flags & 0x1000:
        layer["seq"] = _U32.unpack_from(data, p)[0]
        p += 4
    if p > end:
        return None
    if ptype == ERSPAN_II:
        if not flags & 0x1000:          # type I: no ERSPAN header, the mirrored frame follows
            layer["proto"] = "erspan1"
            return "ether", p, layer
        word = _U16.unpack_from(data, p + 2)[0]
        layer.update(proto="erspan2", session=word & 0x3FF, vlan=_U16.unpack_from(data, p)[0] & 0xFFF)
        return "ether", p + 8, layer
    if ptype == ERSPAN_III:
        word = _U16.unpack_from(data, p + 2)[0]
        tail = _U16.unpack_from(data, p + 10)[0]
        frame_type = (tail >> 10) & 0x1F
        if frame_type != 0:
            return None
        layer.update(proto="erspan3", session=word & 0x3FF, vlan=_U16.unpack_from(data, p)[0] & 0xFFF,
                     hw_id=(tail >> 4) & 0x3F)
        return "ether", p + 12 + (8 if tail & 1 else 0), layer
    inner = _ETHER_TYPES.get(ptype)
    if inner is None:
        return None
    return inner, p, layer


def mpls(data: bytes, off: int, end: int):
    """An MPLS label stack at off; what follows is guessed by its first nibble."""
    labels = []
    p = off
    while True:
        if p + 4 > end or len(labels) >= 16:
            return None
        entry = _U32.unpack_from(data, p)[0]
        labels.append(entry >> 12)
        p += 4
        if entry & 0x100:               # bottom of stack
            break
    if p >= end:
        return None
    nibble = data[p] >> 4
    layer = {"proto": "mpls", "labels": labels}
    if nibble == 4:
        return "ipv4", p, layer
    if nibble == 6:
        return "ipv6", p, layer
    if nibble == 0:                     # pseudowire control word, then the Ethernet frame
        p += 4
    return "ether", p, layer
