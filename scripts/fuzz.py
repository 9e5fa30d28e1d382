#!/usr/bin/env python3
"""Coverage-guided fuzzing of every layer that reads untrusted bytes (atheris / libFuzzer).

    .venv/bin/python scripts/fuzz.py LAYER [--seconds N | --runs N] [--seed S] [-- libFuzzer options]

LAYER is one of: capture, tcp, dcerpc, auth, stub, wmio, object_array, context,
refresher, or `all` (one target that gives the first input octet to choose the
layer: what the test suite runs briefly). `--list` names them.

Each layer is seeded from the real captures (../shared/captures) and the project's
samples (pcaps/, wmiscope.synth): capture files, TCP segments, reassembled DCE/RPC
streams, auth_values, call stubs, MS-WMIO EncodingUnits, ObjectArrays, IWbemContext
OBJREFs, refresher blobs. The seeds are written under .fuzz/LAYER/seeds and the
growing corpus under .fuzz/LAYER/corpus (both ignored by git); a crash or a hang is
written as .fuzz/LAYER/crash-* / timeout-* by libFuzzer. Minimize one with
`scripts/fuzz.py LAYER -- -minimize_crash=1 -runs=10000 .fuzz/LAYER/crash-...`, then
check it in as tests/fuzz_regressions/LAYER/NAME (tests/test_fuzz.py replays them).

What is a crash: any exception a layer's contract does not allow. The pipeline
layers (capture, tcp, dcerpc, stub) must raise nothing and report no "internal
error" record, and their records must render (JSON lines, ISO times); the format
layers may raise only DecodeError, and what they decode must render as JSON (and
MOF). libFuzzer's -timeout (10 s) catches hangs, -rss_limit_mb (2 GB) runaway memory.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT.parent / "shared" / "captures"
PCAPS = ROOT / "pcaps"
LAYERS = ("capture", "tcp", "dcerpc", "auth", "stub", "wmio", "object_array", "context", "refresher")


class FuzzFailure(AssertionError):
    """A layer broke its contract on an input (an internal error record, output that cannot render)."""


# --- harnesses: one function per layer, bytes in ------------------------------------------

def h_capture(data: bytes) -> None:
    from wmiscope.dissectors.capture import CaptureFormatError, open_capture, tcp_segment

    try:
        reader = open_capture(io.BytesIO(data))
    except CaptureFormatError:
        return
    for _, ts, linktype, frame in reader:
        tcp_segment(linktype, frame)
        _render_time(ts)
    _render(reader.errors)


_CLIENTS = [(f"10.0.0.{i + 2}", 49700 + i) for i in range(4)]
_SERVER = ("10.0.0.1", 135)
_SEG = struct.Struct("!BBIIH")      # flags, connection*2+direction, seq, ack, payload length


def tcp_records_to_frames(data: bytes):
    """The tcp layer's input: records (_SEG + payload) made into raw-IPv4 frames (linktype 228)."""
    frames = []
    pos = 0
    while pos + _SEG.size <= len(data) and len(frames) < 4096:
        flags, which, seq, ack, n = _SEG.unpack_from(data, pos)
        pos += _SEG.size
        payload = data[pos:pos + min(n, 65495)]       # what an IPv4 packet can carry
        pos += n
        (cip, cport) = _CLIENTS[(which >> 1) & 3]
        (sip, sport), (dip, dport) = ((cip, cport), _SERVER) if which & 1 == 0 else (_SERVER, (cip, cport))
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags & 0x3F, 65535, 0, 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                         bytes(map(int, sip.split("."))), bytes(map(int, dip.split(".")))) + tcp
        frames.append((len(frames) + 1, 1_700_000_000.0 + len(frames), 228, ip))
    return frames


def h_tcp(data: bytes) -> None:
    _analyse(tcp_records_to_frames(data))


def h_dcerpc(data: bytes) -> None:
    """Chunks of one connection's two byte streams ([direction][u16 length][octets] ...),
    cut into PDUs and calls, and the calls decoded by the DCOM and WMI layers."""
    from wmiscope.dissectors.dcerpc import DceRpcConnection
    from wmiscope.dissectors.pipeline import Analysis
    from wmiscope.dissectors.tcp import TcpConnection

    analysis = Analysis(want_pdus=True)
    conn = TcpConnection(0, _CLIENTS[0], _SERVER, 1, "syn")
    rpc = DceRpcConnection(conn, analysis.emit)
    pos = frame = 0
    while pos + 3 <= len(data):
        direction, n = data[pos] & 1, int.from_bytes(data[pos + 1:pos + 3], "little")
        frame += 1
        if data[pos] & 0x80:
            rpc.on_gap(direction, n, frame)
        else:
            rpc.on_data(direction, data[pos + 3:pos + 3 + n], frame, float(frame))
            pos += n
        pos += 3
    rpc.on_close(frame + 1)
    _render(list(analysis._out))


def h_auth(data: bytes) -> None:
    from wmiscope.dissectors.auth import inner_token, parse_token, token_summary
    from wmiscope.formats.errors import DecodeError

    for auth_type in (None, 0x44):
        try:
            tok = parse_token(data, auth_type)
        except DecodeError:
            continue
        token_summary(tok)
        inner_token(tok)


_STUB_HEAD = struct.Struct("<16sHB")     # interface UUID (little-endian GUID), opnum, direction


def h_stub(data: bytes) -> None:
    """One stub of one call ([interface uuid][opnum][direction][stub]) through the DCOM
    and WMI decoders, as the pipeline runs them, then rendered as JSON lines."""
    import uuid

    from wmiscope.dissectors.dcom import DcomDecoder, IpidRegistry
    from wmiscope.dissectors.records import Call
    from wmiscope.dissectors.wmi import WmiDecoder

    if len(data) < _STUB_HEAD.size:
        return
    raw, opnum, direction = _STUB_HEAD.unpack_from(data)
    stub = data[_STUB_HEAD.size:]
    call = Call(conn=0, call_id=1, client=_CLIENTS[0], server=_SERVER, ctx_id=0,
                interface_uuid=str(uuid.UUID(bytes_le=raw)), opnum=opnum, req_frames=(1, 1), req_ts=1.0)
    if direction & 1:
        call.resp_frames, call.resp_ts, call.resp_stub, call.resp_stub_len = (2, 2), 2.0, stub, len(stub)
        call.req_stub = b""
    else:
        call.req_stub, call.req_stub_len = stub, len(stub)
    DcomDecoder(IpidRegistry()).decode_call(call)
    WmiDecoder().decode_call(call)
    _render([call])


def _format(parse, data: bytes, *render):
    from wmiscope.formats.errors import DecodeError

    try:
        obj = parse(data)
    except DecodeError:
        return
    for r in render:
        r(obj)


def h_wmio(data: bytes) -> None:
    from wmiscope.formats import wmio

    _format(wmio.parse_encoding_unit, data, wmio.to_json, wmio.to_mof, _dumps)
    _format(wmio.parse_object_block, data[8:], wmio.to_json, wmio.to_mof)


def h_object_array(data: bytes) -> None:
    from wmiscope.formats.object_array import parse_object_array

    _format(parse_object_array, data, lambda a: _dumps(a.to_json()))


def h_context(data: bytes) -> None:
    from wmiscope.formats import context

    parse = context.parse_context_objref if data[:4] == b"MEOW" else context.parse_context
    _format(parse, data, lambda c: _dumps(c.to_json()))


def h_refresher(data: bytes) -> None:
    from wmiscope.formats import refresher, wmio

    template = _refresher_template()
    _format(lambda d: refresher.parse_instance_blob(d, template), data, lambda objs: [wmio.to_json(o) for o in objs])
    _format(lambda d: refresher.parse_refreshed_single_instance(d, template), data, wmio.to_json)


HARNESSES = {name: globals()[f"h_{name}"] for name in LAYERS}


def h_all(data: bytes) -> None:
    """Every layer behind one target: the first octet chooses it."""
    if data:
        HARNESSES[LAYERS[data[0] % len(LAYERS)]](data[1:])


# --- what every harness checks ---------------------------------------------------------

def _analyse(frames) -> None:
    from wmiscope.dissectors.pipeline import Analysis

    analysis = Analysis(want_pdus=True)
    _render(list(analysis.run(iter(frames))))     # a list would be read as a capture set's paths
    analysis.stats.as_dict()


def _render(records) -> None:
    """Every record as the outputs show it; an 'internal error' is a bug of ours."""
    from wmiscope.dissectors.jsonl import call_dict, error_dict
    from wmiscope.dissectors.pipeline import call_outcome
    from wmiscope.dissectors.records import Call, ErrorRecord

    for rec in records:
        kind = type(rec)
        if kind is Call:
            errors = rec.errors
            _dumps(call_dict(rec, call_outcome(rec)))
        elif kind is ErrorRecord:
            errors = [rec]
            _dumps(error_dict(rec))
        else:
            continue
        for e in errors:
            if "internal error" in e.reason:
                raise FuzzFailure(f"{e.kind}: {e.reason}")


def _render_time(ts: float) -> None:
    from wmiscope.dissectors.jsonl import iso

    iso(ts)


def _dumps(obj) -> None:
    from wmiscope.dissectors.jsonl import dumps

    dumps(obj)


_TEMPLATE = []


def _refresher_template():
    if not _TEMPLATE:
        from wmiscope.synth import wmi_objects

        _TEMPLATE.append(wmi_objects.win32_process_class())
    return _TEMPLATE[0]


# --- seeds -------------------------------------------------------------------------------

def _capture_files() -> list[Path]:
    files = sorted(PCAPS.glob("*.pcap"))
    if CAPTURES.is_dir():
        files += sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap"))
    return files


def seeds(layer: str, limit: int = 400) -> list[bytes]:
    """Inputs for `layer` cut out of the real captures and the samples (at most `limit`)."""
    out = _SEEDERS[layer]()
    out = [s for s in dict.fromkeys(out) if s][:limit]
    return out


def _seed_capture() -> list[bytes]:
    return [p.read_bytes()[:1 << 16] for p in _capture_files()]


def _seed_tcp() -> list[bytes]:
    out = []
    for path in _capture_files():
        conns: dict = {}
        parts = []
        for p, _, seg in _segments_of(path):
            key = frozenset(((seg.src, seg.sport), (seg.dst, seg.dport)))
            cid = conns.setdefault(key, (len(conns) & 3, (seg.src, seg.sport)))
            which = cid[0] << 1 | ((seg.src, seg.sport) != cid[1])
            parts.append(_SEG.pack(seg.flags & 0x3F, which, seg.seq, seg.ack, len(seg.payload[:65535]))
                         + seg.payload[:65535])
            if len(parts) >= 40:
                break
        out.append(b"".join(parts))
    return out


def _segments_of(path):
    from wmiscope.dissectors.capture import open_capture, tcp_segment

    for frame, _, linktype, data in open_capture(path):
        seg = tcp_segment(linktype, data)
        if seg is not None:
            yield path, frame, seg


def _seed_dcerpc() -> list[bytes]:
    out = []
    for path in _capture_files():
        streams: dict = {}
        for _, _, seg in _segments_of(path):
            if not seg.payload:
                continue
            key = frozenset(((seg.src, seg.sport), (seg.dst, seg.dport)))
            first = streams.setdefault(key, [(seg.src, seg.sport), []])
            direction = int((seg.src, seg.sport) != first[0])
            first[1].append(bytes([direction]) + len(seg.payload[:65535]).to_bytes(2, "little")
                            + seg.payload[:65535])
        out += [b"".join(chunks[:30]) for _, chunks in streams.values()]
    return out


def _records(**kwargs):
    from wmiscope.dissectors.pipeline import Analysis

    for path in _capture_files():
        yield from Analysis(**kwargs).run(path)


def _seed_auth() -> list[bytes]:
    from wmiscope.dissectors.records import Pdu

    return [r.auth.token for r in _records(want_pdus=True, objects=False) if type(r) is Pdu and r.auth]


def _stubs() -> list[bytes]:
    from wmiscope.dissectors.records import Call

    out = []
    for r in _records(objects=False):
        if type(r) is Call:
            out += [s for s in (r.req_stub, r.resp_stub) if s]
    return out


def _seed_stub() -> list[bytes]:
    import uuid

    from wmiscope.dissectors.records import Call

    out = []
    for r in _records(objects=False):
        if type(r) is Call and r.interface_uuid and r.opnum is not None:
            head = uuid.UUID(r.interface_uuid).bytes_le
            for direction, stub in ((0, r.req_stub), (1, r.resp_stub)):
                if stub:
                    out.append(_STUB_HEAD.pack(head, r.opnum & 0xFFFF, direction) + stub)
    return out


def _cut(signature: bytes, stubs: list[bytes]) -> list[bytes]:
    out = []
    for s in stubs:
        at = s.find(signature)
        while at >= 0:
            out.append(s[at:])
            at = s.find(signature, at + 1)
    return out


def _seed_wmio() -> list[bytes]:
    return _cut(b"\x78\x56\x34\x12", _stubs())


def _seed_object_array() -> list[bytes]:
    from wmiscope.synth import wmi_objects

    cls = wmi_objects.win32_process_class()
    return _cut(b"\0\0\0\0WBEMDATA", _stubs()) + [
        wmi_objects.object_array([cls], [wmi_objects.PROCESS_CLASS_ID])]


def _seed_context() -> list[bytes]:
    return _cut(b"MEOW", _stubs())


def _seed_refresher() -> list[bytes]:
    from wmiscope.formats import refresher, wmio

    cls = _refresher_template()
    instances = [wmio.new_instance(cls, {"Handle": str(i), "ProcessId": i, "Name": f"p{i}.exe"}) for i in range(3)]
    return [refresher.build_instance_blob(instances), refresher.build_refreshed_single_instance(instances[0])]


_SEEDERS = {name: globals()[f"_seed_{name}"] for name in LAYERS}


def all_seeds(limit: int = 60) -> list[bytes]:
    return [bytes([i]) + s for i, layer in enumerate(LAYERS) for s in seeds(layer, limit)]


# --- running ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layer", nargs="?", choices=(*LAYERS, "all"))
    ap.add_argument("--seconds", type=int, help="stop after this many seconds")
    ap.add_argument("--runs", type=int, help="stop after this many executions")
    ap.add_argument("--seed", type=int, help="libFuzzer's random seed (a fixed one replays a run)")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".fuzz", help="seeds, corpus and artefacts (default .fuzz)")
    ap.add_argument("--list", action="store_true", help="name the layers and stop")
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = ap.parse_args(ours)      # after --: options and inputs for libFuzzer
    if args.list or not args.layer:
        print("\n".join((*LAYERS, "all")))
        return 0
    import atheris

    # Only our own code is instrumented: coverage of construct or scapy would steer
    # the fuzzer into libraries we do not own, and cost time.
    with atheris.instrument_imports(include=["wmiscope"]):
        import wmiscope.commands.output  # noqa: F401
        import wmiscope.dissectors.pipeline  # noqa: F401
        import wmiscope.formats.refresher  # noqa: F401
    target = h_all if args.layer == "all" else HARNESSES[args.layer]
    work = args.workdir / args.layer
    seed_dir, corpus = work / "seeds", work / "corpus"
    inputs = [a for a in extra if not a.startswith("-")]
    if not inputs:      # fuzzing (not replaying given files): seed and keep a corpus
        seed_dir.mkdir(parents=True, exist_ok=True)
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(seed_dir.iterdir()):
            for i, s in enumerate(all_seeds() if args.layer == "all" else seeds(args.layer)):
                (seed_dir / f"seed-{i:04d}").write_bytes(s)
        inputs = [str(corpus), str(seed_dir)]
    opts = ["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={work}{os.sep}",
            "-max_len=262144"]
    if args.seconds:
        opts.append(f"-max_total_time={args.seconds}")
    if args.runs is not None:
        opts.append(f"-runs={args.runs}")
    if args.seed is not None:
        opts.append(f"-seed={args.seed}")
    flags = [a for a in extra if a.startswith("-")]
    sys.argv = [sys.argv[0], *opts, *flags, *inputs]     # libFuzzer reads the process's own argv too
    atheris.Setup(sys.argv, lambda data: target(bytes(data)))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
