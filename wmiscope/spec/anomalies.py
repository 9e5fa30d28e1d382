"""The anomaly catalog: every kind of located record the pipeline can report.

In the manner of Wireshark's expert info (the ``ei[]`` arrays of its dissectors)
and Zeek's weird names: each kind has a stable name (``layer.what``), a severity,
the layer that reports it and a one-line meaning. Names never change once
released; a new kind gets a new name. ``docs/anomalies.md`` is generated from
this table (``python -m wmiscope.spec.anomalies > docs/anomalies.md``) and a test
proves it current.

Severity, as an analyst reads it:

* ``error``: the bytes break the protocol; what they carry is lost or decoded in
  part, and the call they belong to counts as malformed.
* ``warning``: odd, or a limit of the capture or of our knowledge (a gap, secrets
  that do not open a connection); what could be decoded was.
* ``note``: worth knowing, nothing was lost.

Plain data, importing nothing of ours.
"""

from __future__ import annotations

from typing import NamedTuple

SEVERITIES = ("error", "warning", "note")
LAYERS = ("capture", "ip", "tcp", "dcerpc", "auth", "dcom", "wmi", "analysis")


class Anomaly(NamedTuple):
    name: str
    severity: str
    layer: str
    meaning: str


ANOMALIES: tuple[Anomaly, ...] = (
    # capture files
    Anomaly("capture.truncated", "error", "capture",
            "The capture file ends inside a record or block; every frame before it was read."),
    Anomaly("capture.corrupt_record", "error", "capture",
            "A record or block has an impossible length, byte-order magic, version or interface; reading stops there."),
    Anomaly("capture.gzip_damaged", "error", "capture",
            "The gzip stream is damaged or cut short (located at its compressed octets); the frames before were read."),
    Anomaly("capture.read_failed", "error", "capture",
            "Reading the capture file failed (an I/O error); the frames before were read."),
    Anomaly("capture.timestamp_out_of_range", "warning", "capture",
            "Packet times outside 1970..9999 (a hostile if_tsresol / if_tsoffset) were clamped into that range."),
    Anomaly("capture.other", "error", "capture", "A capture-file problem without a more specific name."),
    # IP fragment reassembly (RFC 791, RFC 8200, RFC 5722: dissectors/ipfrag.py)
    Anomaly("ip.frag_overlap", "warning", "ip",
            "IPv4 fragments overlap with different octets; the first-seen octets are kept."),
    Anomaly("ip.frag_overlap_dropped", "warning", "ip",
            "IPv6 fragments overlap: the whole datagram is discarded (RFC 5722)."),
    Anomaly("ip.frag_too_big", "warning", "ip",
            "Fragment would make the datagram exceed 65,535 octets; datagram discarded."),
    Anomaly("ip.frag_bad_length", "warning", "ip",
            "IPv6 non-final fragment length is not a multiple of 8; datagram discarded."),
    Anomaly("ip.frag_inconsistent_end", "warning", "ip",
            "A fragment disagrees with those held on where the datagram ends; those held are discarded, "
            "the fragment starts a new datagram."),
    Anomaly("ip.frag_too_many", "warning", "ip",
            "More fragments than the per-datagram limit; datagram discarded."),
    Anomaly("ip.frag_pending_limit", "note", "ip",
            "Too many datagrams (or octets) pending reassembly; the oldest discarded."),
    Anomaly("ip.frag_timeout", "note", "ip",
            "Datagram not completed within the reassembly timeout; discarded."),
    Anomaly("ip.frag_incomplete", "note", "ip",
            "Datagram still missing fragments when the capture ended."),
    Anomaly("ip.other", "warning", "ip", "An IP-layer problem without a more specific name."),
    # TCP
    Anomaly("tcp.gap", "warning", "tcp",
            "Segments of a DCE/RPC connection were not captured; the calls around the hole may be incomplete."),
    Anomaly("tcp.retransmission_conflict", "warning", "tcp",
            "A retransmission carries octets that differ from the first-seen ones (kept); a sign of injection."),
    Anomaly("tcp.connection_evicted", "warning", "tcp",
            "More DCE/RPC connections were open than the reassembler keeps (10,000); the least recently active one "
            "was closed, its session state (contexts, keys) with it."),
    Anomaly("tcp.other_connections_evicted", "note", "tcp",
            "More connections that showed no DCE/RPC (other protocols, half-open, noise) were open than the "
            "reassembler keeps (1,024); the least recently active eighth was closed, in one record."),
    Anomaly("tcp.internal_error", "error", "tcp",
            "A stage above TCP failed on a connection's bytes (a bug of ours); the run went on without it."),
    Anomaly("tcp.other", "warning", "tcp", "A TCP problem without a more specific name."),
    # DCE/RPC connection-oriented PDUs (MS-RPCE 2.2.2, C706 chapter 12)
    Anomaly("dcerpc.bad_version", "error", "dcerpc",
            "A common header's rpc_vers is not 5.0 or 5.1; the layer hunts for the next header."),
    Anomaly("dcerpc.bad_ptype", "error", "dcerpc",
            "A common header names no connection-oriented PDU type; the layer hunts for the next header."),
    Anomaly("dcerpc.bad_drep", "error", "dcerpc",
            "A common header's packed_drep names no known data representation; the layer hunts for the next header."),
    Anomaly("dcerpc.frag_len_short", "error", "dcerpc",
            "frag_length (with auth_length) is too small for the PDU type; the layer hunts for the next header."),
    Anomaly("dcerpc.frag_len_exceeds_max", "error", "dcerpc",
            "frag_length exceeds the fragment size negotiated at bind time; the layer hunts for the next header."),
    Anomaly("dcerpc.resynchronised", "note", "dcerpc",
            "A plausible header was found again after skipping octets while hunting."),
    Anomaly("dcerpc.no_header", "error", "dcerpc",
            "Octets up to the end of the stream hold no plausible header; they are not decoded."),
    Anomaly("dcerpc.gap_in_pdu", "error", "dcerpc",
            "A TCP gap fell inside a PDU; the PDU's octets were dropped and the layer hunts for the next header."),
    Anomaly("dcerpc.stream_ends_in_pdu", "warning", "dcerpc",
            "The connection ends (or the capture stops) inside a PDU."),
    Anomaly("dcerpc.pdu_malformed", "error", "dcerpc",
            "A PDU's body does not parse (bind contexts, auth verifier, lengths)."),
    Anomaly("dcerpc.unexpected_ptype", "error", "dcerpc",
            "A PDU type the other side sends (e.g. a response from the client) appears on a call."),
    Anomaly("dcerpc.too_many_open_calls", "warning", "dcerpc",
            "More calls were open on a connection than are kept; the oldest was given up unanswered."),
    Anomaly("dcerpc.fragment_restarted", "error", "dcerpc",
            "A first fragment (PFC_FIRST_FRAG) arrived before the previous request or response had its last."),
    Anomaly("dcerpc.first_fragment_missing", "error", "dcerpc",
            "A fragment arrived without a first fragment before it: earlier fragments were not captured."),
    Anomaly("dcerpc.stub_too_large", "error", "dcerpc",
            "A call's fragments add up to more than the bound on one stub; its data is dropped."),
    Anomaly("dcerpc.last_fragment_missing", "error", "dcerpc",
            "A request or response never saw its last fragment (PFC_LAST_FRAG)."),
    Anomaly("dcerpc.fragments_missing", "error", "dcerpc",
            "A stub may miss fragments (a TCP gap, a malformed or uncaptured fragment)."),
    Anomaly("dcerpc.idle_released", "warning", "dcerpc",
            "A connection was idle (30 s of capture time) inside a PDU or a fragmented stub: the PDU's octets are "
            "dropped, the call is given up; its bind and security contexts and keys are kept."),
    Anomaly("dcerpc.internal_error", "error", "dcerpc", "Cutting PDUs failed (a bug of ours); the run went on."),
    Anomaly("dcerpc.other", "error", "dcerpc", "A DCE/RPC problem without a more specific name."),
    # authentication (MS-RPCE 2.2.2.11, MS-NLMP, MS-SPNG, RFC 4120/4121)
    Anomaly("auth.token_malformed", "error", "auth",
            "An auth_value (NTLMSSP, SPNEGO or Kerberos token) of a bind or alter_context does not parse."),
    Anomaly("auth.cannot_decrypt", "warning", "auth",
            "The credentials given do not open this sealed connection (said once); its stubs stay encrypted."),
    Anomaly("auth.cannot_verify", "warning", "auth",
            "The credentials given do not check this signed connection (said once); its stubs are decoded unverified."),
    Anomaly("auth.mic_invalid", "error", "auth",
            "An NTLM AUTHENTICATE message's MIC is missing or does not verify: the handshake was altered (relay)."),
    Anomaly("auth.other", "warning", "auth", "An authentication problem without a more specific name."),
    # DCOM (MS-DCOM 2.2)
    Anomaly("dcom.stub_malformed", "error", "dcom", "An ORPCTHIS, ORPCTHAT or OBJREF in a stub does not parse."),
    Anomaly("dcom.objref_flood", "warning", "dcom",
            "More malformed OBJREF candidates in one stub than are reported one by one; this says how many more."),
    Anomaly("dcom.stub_trailing_bytes", "warning", "dcom",
            "Octets are left over after a DCOM method's last parameter: a marshaling the table does not expect "
            "(the values before them may be misread)."),
    Anomaly("dcom.internal_error", "error", "dcom", "Decoding a DCOM call failed (a bug of ours); the run went on."),
    Anomaly("dcom.other", "error", "dcom", "A DCOM problem without a more specific name."),
    # WMI (MS-WMI 2.2, 3.1.4; MS-WMIO)
    Anomaly("wmi.stub_malformed", "error", "wmi",
            "A WMI method's parameters (or an object in them) do not parse; the ones after it are not decoded."),
    Anomaly("wmi.stub_trailing_bytes", "warning", "wmi",
            "Octets are left over after a stub's last parameter: a marshaling the table does not expect "
            "(the values before them may be misread)."),
    Anomaly("wmi.internal_error", "error", "wmi", "Decoding a WMI call failed (a bug of ours); the run went on."),
    Anomaly("wmi.other", "error", "wmi", "A WMI problem without a more specific name."),
    # the analysis itself
    Anomaly("analysis.suppressed", "note", "analysis",
            "A flood of one kind on one connection: past the first records, the rest were counted, not shown; "
            "this record says how many."),
)

BY_NAME: dict[str, Anomaly] = {a.name: a for a in ANOMALIES}


def markdown() -> str:
    """docs/anomalies.md: the catalog as a table, layer by layer."""
    lines = [
        "# Anomaly catalog",
        "",
        "Every located record wmiscope reports has one of these kinds (`kind` in JSON lines,",
        "`[kind]` at the end of a `!` line, counted by `wmiscope stats`). Generated from",
        "`wmiscope/spec/anomalies.py` by `python -m wmiscope.spec.anomalies > docs/anomalies.md`;",
        "do not edit by hand.",
        "",
        "Severity: **error**: the bytes break the protocol and the call counts as malformed; "
        "**warning**: odd, or a limit of the capture or of the secrets given, and what could be "
        "decoded was; **note**: worth knowing, nothing was lost.",
        "",
        "| name | severity | layer | meaning |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| `{a.name}` | {a.severity} | {a.layer} | {a.meaning} |" for a in ANOMALIES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown())
