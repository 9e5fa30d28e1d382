"""Records that flow between the pipeline stages.

Each stage consumes the previous stage's records and yields its own; these are
the shapes they agree on. Plain slotted dataclasses: cheap to create in the hot
path and trivially turned into JSON (see `as_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from wmiscope.spec.anomalies import BY_NAME as _ANOMALIES


@dataclass(slots=True)
class ErrorRecord:
    """A located anomaly met anywhere in the pipeline; the run goes on after it.

    ``kind`` names it in the anomaly catalog (wmiscope/spec/anomalies.py), which
    gives its severity and meaning; a name the catalog lacks is refused. Left out,
    it is the stage's catch-all ``<stage>.other``.
    """

    stage: str                      # capture | tcp | dcerpc | auth | dcom | wmi | analysis
    reason: str                     # what was expected / what was wrong
    frame: int | None = None        # frame number (1-based, as tshark counts)
    conn: int | None = None         # TCP connection index (like tcp.stream)
    structure: str | None = None    # spec name of the structure being decoded
    offset: int | None = None       # byte offset inside that structure's buffer
    kind: str | None = None         # catalog name, e.g. "dcerpc.frag_len_short" (wmiscope/spec/anomalies.py)
    file: str | None = None         # in a capture set of several files: the file of `frame`
    file_frame: int | None = None   # ... and the frame's number inside that file

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = f"{self.stage}.other"
        if self.kind not in _ANOMALIES:
            raise ValueError(f"anomaly kind {self.kind!r} is not in the catalog (wmiscope/spec/anomalies.py)")

    @property
    def severity(self) -> str:
        """error | warning | note, from the catalog."""
        return _ANOMALIES[self.kind].severity


@dataclass(slots=True)
class AuthVerifier:
    """sec_trailer + auth_value of a PDU (MS-RPCE 2.2.2.11)."""

    auth_type: int                  # 9 SPNEGO, 10 NTLMSSP, 16 Kerberos, 0x44 netlogon ...
    auth_level: int                 # 2 connect .. 6 privacy
    pad_len: int
    ctx_id: int
    token: bytes                    # auth_value (NTLMSSP message, SPNEGO blob, signature)


@dataclass(slots=True)
class PresentationContext:
    """One p_cont_elem of a bind / alter_context, with the result the server gave it."""

    ctx_id: int
    abstract_uuid: str              # lower-case canonical UUID text
    abstract_version: str           # "major.minor"
    transfer_syntaxes: list[str]    # UUIDs offered
    result: int | None = None       # 0 acceptance, 1 user rejection, 2 provider rejection, 3 negotiate_ack
    reason: int | None = None
    accepted_syntax: str | None = None


@dataclass(slots=True)
class Pdu:
    """One connection-oriented DCE/RPC PDU, as cut out of the reassembled TCP stream."""

    conn: int                       # TCP connection index
    direction: int                  # 0 client->server, 1 server->client
    first_frame: int                # frame carrying the PDU's first byte
    frame: int                      # frame carrying its last byte (where tshark shows it)
    ts: float
    ptype: int
    flags: int
    drep: int                       # first octet of the data representation
    frag_len: int
    auth_len: int
    call_id: int
    ctx_id: int | None = None       # request / response / fault
    opnum: int | None = None        # request only
    object_uuid: str | None = None  # request with PFC_OBJECT_UUID: the IPID in DCOM
    alloc_hint: int | None = None
    status: int | None = None       # fault status
    stub: bytes = b""               # stub data of this fragment, auth padding removed
    auth: AuthVerifier | None = None
    contexts: list[PresentationContext] = field(default_factory=list)  # bind/alter/ack
    assoc_group: int | None = None
    sec_addr: str | None = None     # bind_ack secondary address
    extra: dict | None = None       # ptype-specific rest: max_xmit_frag/max_recv_frag, cancel_count, versions


@dataclass(slots=True)
class Call:
    """A request paired with its response (or fault), fragments reassembled."""

    conn: int
    call_id: int
    client: tuple[str, int]
    server: tuple[str, int]
    ctx_id: int | None = None
    interface_uuid: str | None = None
    interface: str | None = None    # name from the interface table, None when unknown
    interface_source: str | None = None  # "ipid" | "context" | None
    opnum: int | None = None
    method: str | None = None
    ipid: str | None = None
    req_frames: tuple[int, int] | None = None   # (first, last) frame of the request
    req_ts: float | None = None
    req_stub: bytes | None = None   # None when sealed and not decrypted
    req_stub_len: int = 0
    req_encrypted: bool = False
    resp_frames: tuple[int, int] | None = None
    resp_ts: float | None = None
    resp_stub: bytes | None = None
    resp_stub_len: int = 0
    resp_encrypted: bool = False
    req_decrypted: bool = False     # sealed on the wire, decrypted with the analyst's credentials
    resp_decrypted: bool = False
    req_verified: bool | None = None   # level 5 (integrity): every signature verified / one did not; None: not checked
    resp_verified: bool | None = None
    fault: int | None = None        # fault status when the call failed at the RPC layer
    auth_type: int | None = None
    auth_level: int | None = None
    auth_principal: str | None = None
    auth_client: str | None = None  # Kerberos client cname@crealm, when the analyst's keytab opened the ticket
    decoded: dict | None = None     # stage-specific decoded parameters (DCOM / WMI)
    errors: list[ErrorRecord] = field(default_factory=list)
    drep: int = 0x10                # data representation of the request (0x10: little-endian NDR)
    operation: dict | None = None   # the WMI operation this call belongs to (dissectors/operations.py)
    tunnel: tuple | None = None     # tunnels the connection came through (VXLAN, GRE ...: TcpSegment.tunnel)
    origin: dict | None = None      # capture sets: {"request"/"response": [[file, frame], [file, frame]]}


def call_frame(call: Call, direction: int) -> int | None:
    """The frame where a call's request (0) or response (1) completed."""
    frames = call.req_frames if direction == 0 else call.resp_frames
    return frames[1] if frames else None


def guarded(stage: str, decode, call: Call) -> None:
    """decode(call), with any bug of a decoder turned into a located record on the call:
    a stage never stops the pipeline."""
    try:
        decode(call)
    except Exception as e:  # noqa: BLE001 - that is the point
        call.errors.append(ErrorRecord(stage=stage, reason=f"internal error: {type(e).__name__}: {e}",
                                       frame=call_frame(call, 0), conn=call.conn, kind=f"{stage}.internal_error"))


def is_error(rec: ErrorRecord) -> bool:
    """Whether a record breaks what it belongs to (severity error), not just warns or notes."""
    return _ANOMALIES[rec.kind].severity == "error"


def as_dict(rec) -> dict:
    """A record as plain JSON-able data (bytes become their length)."""
    out = {}
    for f in fields(rec):
        v = getattr(rec, f.name)
        if isinstance(v, (bytes, bytearray, memoryview)):
            continue
        if isinstance(v, list):
            v = [as_dict(x) if hasattr(x, "__dataclass_fields__") else x for x in v]
        elif hasattr(v, "__dataclass_fields__"):
            v = as_dict(v)
        out[f.name] = v
    return out
