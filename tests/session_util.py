"""The sealed and signed samples seen from below, for tests/test_decrypt.py and
tests/test_signing.py: the test-only credentials that open them, their PDUs as the wire
carries them, and a DCE/RPC connection fed with PDUs directly (no capture file).
"""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace

from tshark_util import generator, sample_secrets
from wmiscope.dissectors.auth import AuthContexts
from wmiscope.dissectors.credentials import ConnectionKeys, Credentials
from wmiscope.dissectors.dcerpc import DceRpcConnection

_GEN = generator()
CREDS = sample_secrets()["wmi-sealed-samples.credentials"]


def sample_credentials() -> Credentials:
    c = Credentials()
    c.load(CREDS)
    return c


def payload_pdus(path) -> list[tuple[int, bytes]]:
    """(direction, PDU) of each frame of a sample (one PDU per frame in these sessions),
    cut out of the TCP payloads by scapy rather than by our own wire engine."""
    from scapy.all import TCP, rdpcap

    out = []
    for pkt in rdpcap(str(path)):
        data = bytes(pkt[TCP].payload) if TCP in pkt else b""
        if len(data) >= 16 and data[0] == 5:
            out.append((0 if pkt[TCP].dport == _GEN.SERVER[1] else 1, data))
    return out


def stub_at(pdu: bytes) -> int:
    """Where the stub of a request or response starts (MS-RPCE 2.2.2.11/12): after the 24
    octets of header, and a request's 16-octet object UUID when PFC_OBJECT_UUID is set."""
    return 24 + (16 if pdu[2] == 0 and pdu[3] & 0x80 else 0)


def call_pdus(pdus):
    """(direction, PDU, stub start, sec_trailer start) of each request and response among
    (direction, PDU) pairs; the sec_trailer's 8 octets precede auth_length octets of auth_value."""
    for d, pdu in pdus:
        if pdu[2] not in (0, 2):
            continue
        auth_len = struct.unpack_from("<H", pdu, 10)[0]
        yield d, pdu, stub_at(pdu), len(pdu) - auth_len - 8


def damaged_sessions(steps, seed: int, count: int, *, any_bit: bool = True):
    """`count` copies of the (direction, PDU) steps, each with one to three PDUs altered:
    one bit flipped (any bit, else the lowest) past the 16-octet common header, so that
    the PDU is still cut out of the stream and its body or token is what is damaged."""
    rnd = random.Random(seed)
    for _ in range(count):
        damaged = list(steps)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(damaged))
            d, pdu = damaged[i]
            j = rnd.randrange(16, len(pdu))
            bit = 1 << rnd.randrange(8) if any_bit else 1
            damaged[i] = (d, pdu[:j] + bytes([pdu[j] ^ bit]) + pdu[j + 1:])
        yield damaged


def replay(steps, credentials) -> list:
    """The records of one connection (index 4, the sample's hosts) fed (direction, PDU)
    steps, one frame each, with these credentials."""
    out: list = []
    conn = SimpleNamespace(index=4, client=_GEN.CLIENT, server=_GEN.SERVER)
    h = DceRpcConnection(conn, out.append, auth=AuthContexts(key_provider=ConnectionKeys(credentials, 4, out.append)))
    for frame, (direction, pdu) in enumerate(steps, 1):
        h.on_data(direction, pdu, frame, float(frame))
    h.on_close(len(steps) + 1)
    return out
