"""A connection is DCE/RPC or it is not (issue 12): SMB2, HTTP, RDP, LDAP and
Kerberos flows beside WMI never produce DCE/RPC anomalies, on the real captures
and on an SMB2 connection whose handshake was not captured and whose named-pipe
writes carry whole DCE/RPC PDUs."""

from __future__ import annotations

import struct

import pytest

from tshark_util import CAPTURES
from wmiscope import synth
from wmiscope.dissectors.pipeline import analyse
from wmiscope.dissectors.records import Call, ErrorRecord, Pdu

REAL = sorted(p for p in CAPTURES.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
NOT_RPC_PORTS = {80, 88, 139, 389, 443, 445, 3389, 9997}


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_captures_report_nothing_on_flows_that_are_not_dcerpc(path):
    records, stats = analyse(path, want_pdus=True, objects=False)
    rpc_conns = {r.conn for r in records if type(r) in (Pdu, Call)}
    servers = {c.conn: c.server[1] for c in records if type(c) is Call}
    assert not {port for port in servers.values() if port in NOT_RPC_PORTS}
    false_alarms = [e for e in records if type(e) is ErrorRecord and e.conn is not None and e.conn not in rpc_conns]
    assert false_alarms == []
    assert stats.rpc_flows + stats.other_flows <= stats.tcp_flows


def smb2_write(pipe_data: bytes, message_id: int) -> bytes:
    """An SMB2 WRITE request to an open named pipe, in its NetBIOS session message."""
    header = b"\xfeSMB" + struct.pack("<HHIHHIIQIIQ16s", 64, 1, 0, 9, 1, 0, 0, message_id, 0xFFFE, 1, 0x1234,
                                      b"\0" * 16)
    body = struct.pack("<HHIQQIIHHI", 49, 64 + 48, len(pipe_data), 0, 0, 0, 0, 0, 0, 0) + pipe_data
    msg = header + body
    return struct.pack(">I", len(msg)) + msg


def smb2_read_response(pipe_data: bytes, message_id: int) -> bytes:
    header = b"\xfeSMB" + struct.pack("<HHIHHIIQIIQ16s", 64, 1, 0, 8, 1, 1, 0, message_id, 0xFFFE, 1, 0x1234,
                                      b"\0" * 16)
    body = struct.pack("<HBBII", 17, 80, 0, len(pipe_data), 0) + b"\0" * 4 + pipe_data
    msg = header + body
    return struct.pack(">I", len(msg)) + msg


def test_smb2_seen_from_its_middle_stays_quiet(tmp_path):
    """An SMB2 connection to port 445 whose handshake was not captured: its first
    frame is a Negotiate, then srvsvc binds and requests inside SMB2 WRITEs. Beside
    it, a real DCE/RPC session on port 135 still decodes."""
    path = tmp_path / "smb2-midstream.pcap"
    clock = synth.Clock()
    with synth.PcapWriter(path) as pcap:
        smb = synth.TcpSession(pcap, clock, ("10.0.0.7", 50100), ("10.0.0.1", 445))   # no open(): mid-stream
        smb.send(0, struct.pack(">I", 68) + b"\xfeSMB" + b"\0" * 64)     # a Negotiate Protocol Request
        srvsvc = "4b324fc8-1670-01d3-1278-5a47bf6ee188"
        for i in range(12):
            smb.send(0, smb2_write(synth.bind(i + 1, [(0, srvsvc, (3, 0))]), 10 + i))
            smb.send(1, smb2_read_response(synth.request(i + 1, 0, 15, b"\x01" * 40)[0][:20] + b"\xff" * 30, 10 + i))
        rpc = synth.TcpSession(pcap, clock, ("10.0.0.7", 50101), ("10.0.0.1", 135))
        rpc.open()
        rpc.send(0, synth.bind(1, [(0, "000001a0-0000-0000-c000-000000000046", (0, 0))]))
        rpc.send(1, synth.bind_ack(1, 1))
        rpc.close()
    records, stats = analyse(path, want_pdus=True, objects=False)
    errors = [r for r in records if type(r) is ErrorRecord]
    assert errors == []
    assert {r.conn for r in records if type(r) is Pdu} == {1}
    assert (stats.tcp_flows, stats.rpc_flows, stats.other_flows) == (2, 1, 1)
