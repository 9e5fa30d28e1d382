#!/usr/bin/env python3
"""Coverage-guided fuzzing of every layer that reads untrusted bytes (atheris / libFuzzer).

    .venv/bin/python scripts/fuzz.py LAYER [--seconds N | --runs N] [--seed S] [--workdir DIR] [-- libFuzzer options]
    .venv/bin/python scripts/fuzz.py campaign [LAYER...] --workdir DIR [--target N] [--slice S] [--jobs J] [--until HH:MM]
    .venv/bin/python scripts/fuzz.py report [LAYER...] --workdir DIR

LAYER is one of: capture, tcp, dcerpc, auth, stub, wmio, object_array, context,
refresher, or `all` (one target that gives the first input octet to choose the
layer: what the test suite runs briefly). `--list` names them.

Every fuzzing run appends what it did (executions, exec/s, libFuzzer's cov and ft,
corpus size, crashes, hangs, the commit) to DIR/LAYER/campaign.jsonl; the corpus
stays in DIR/LAYER/corpus, so a run resumes where the last one stopped. `campaign`
runs the layers in turns of --slice seconds (each once, then the one nearest to its
target in time, --jobs at once) until each has --target executions over all its runs
(or --until comes); `report` sums the log per layer.

Each layer is seeded from the real captures (../shared/captures) and the project's
samples (pcaps/, wmiscope.synth): capture files, TCP segments, reassembled DCE/RPC
streams, auth_values, call stubs, MS-WMIO EncodingUnits, ObjectArrays, IWbemContext
OBJREFs, refresher blobs (the contexts and refresher blobs are also built: the
captures hold none). The seeds are written under DIR/LAYER/seeds and the growing
corpus under DIR/LAYER/corpus (DIR is .fuzz by default, ignored by git); a crash or a
hang is written as DIR/LAYER/crash-* / timeout-* by libFuzzer. Minimize one with
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
import json
import os
import re
import shlex
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT.parent / "shared" / "captures"
PCAPS = ROOT / "pcaps"
LAYERS = ("capture", "tcp", "dcerpc", "auth", "stub", "wmio", "object_array", "context", "refresher")
# The longest input per layer: room for the largest structure the layer reads whole in
# the captures (a 64 KB capture prefix, a 20 KB class with its methods, a stub of a
# hundred objects, a Kerberos AP-REQ), not for the rest of a stream: a harness's cost
# grows with its input, and libFuzzer spends its time on inputs up to this size.
MAX_LEN = {"capture": 1 << 16, "tcp": 1 << 14, "dcerpc": 1 << 14, "auth": 1 << 13, "stub": 1 << 16,
           "wmio": 1 << 15, "object_array": 1 << 14, "context": 1 << 13, "refresher": 1 << 12}


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


_TCP = struct.Struct("!HHIIBBHHH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
# connection*2+direction (& 7) -> source address, source port, destination address, destination port,
# made once: the harness builds thousands of frames a second
_ENDS = []
for _ip, _port in _CLIENTS:
    _client = (bytes(map(int, _ip.split("."))), _port)
    _server = (bytes(map(int, _SERVER[0].split("."))), _SERVER[1])
    _ENDS += [(*_client, *_server), (*_server, *_client)]


def tcp_records_to_frames(data: bytes):
    """The tcp layer's input: records (_SEG + payload) made into raw-IPv4 frames (linktype 228)."""
    frames = []
    pos = 0
    while pos + _SEG.size <= len(data) and len(frames) < 4096:
        flags, which, seq, ack, n = _SEG.unpack_from(data, pos)
        pos += _SEG.size
        payload = data[pos:pos + min(n, 65495)]       # what an IPv4 packet can carry
        pos += n
        src, sport, dst, dport = _ENDS[which & 7]
        tcp = _TCP.pack(sport, dport, seq, ack, 5 << 4, flags & 0x3F, 65535, 0, 0) + payload
        ip = _IPV4.pack(0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst) + tcp
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
    """The first 40 segments of each capture (connections interleaved), then the first 16
    of each connection alone (the WMI connections start after the first 40)."""
    files, alone = [], []
    for path in _capture_files():
        conns: dict = {}
        parts, each = [], {}
        for p, _, seg in _segments_of(path):
            key = frozenset(((seg.src, seg.sport), (seg.dst, seg.dport)))
            cid = conns.setdefault(key, (len(conns) & 3, (seg.src, seg.sport)))
            direction = (seg.src, seg.sport) != cid[1]
            if len(parts) < 40:
                parts.append(_tcp_record(seg, cid[0] << 1 | direction))
            mine = each.setdefault(key, [])
            if len(mine) < 16:
                mine.append(_tcp_record(seg, direction))
        files.append(b"".join(parts))
        alone += [b"".join(m) for m in each.values() if len(m) > 3]
    return files + alone


def _tcp_record(seg, which: int) -> bytes:
    payload = seg.payload[:65535]
    return _SEG.pack(seg.flags & 0x3F, which, seg.seq, seg.ack, len(payload)) + payload


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


def _cut(signature: bytes, stubs: list[bytes], length=None) -> list[bytes]:
    """Every place `signature` starts in the stubs, to the end of its structure when
    `length(stub, at)` tells it (the rest of a stub is only bytes to wade through)."""
    out = []
    for s in stubs:
        at = s.find(signature)
        while at >= 0:
            n = length(s, at) if length else None
            out.append(s[at:at + n] if n and n <= len(s) - at else s[at:])
            at = s.find(signature, at + 1)
    return out


def _seed_wmio() -> list[bytes]:
    # an EncodingUnit: Signature, ObjectEncodingLength, then that many octets (MS-WMIO 2.2.1)
    return _cut(b"\x78\x56\x34\x12", _stubs(), lambda s, at: 8 + int.from_bytes(s[at + 4:at + 8], "little"))


def _seed_object_array() -> list[bytes]:
    from wmiscope.synth import wmi_objects

    cls = wmi_objects.win32_process_class()
    return _cut(b"\0\0\0\0WBEMDATA", _stubs()) + [
        wmi_objects.object_array([cls], [wmi_objects.PROCESS_CLASS_ID])]


def _seed_context() -> list[bytes]:
    # The captures carry no IWbemContext (their MEOW cuts are other OBJREFs: the iid check
    # only), so contexts are built too: every PropertyType, scalar and array, and objects
    # (VT_UNKNOWN) bare and in their OBJREF, as a buffer and as the OBJREF a client sends.
    import uuid

    from wmiscope.formats import context as c, wmio

    V = c.VarType
    cls = _refresher_template()
    inst = wmio.new_instance(cls, {"Handle": "4", "ProcessId": 4, "Name": "System"})
    scalars = [(V.VT_NULL, None), (V.VT_I1, -2), (V.VT_UI1, 200), (V.VT_I2, -300), (V.VT_UI2, 60000),
               (V.VT_BOOL, True), (V.VT_I4, 64), (V.VT_UI4, 4_000_000_000), (V.VT_R4, 1.5), (V.VT_R8, -2.25),
               (V.VT_BSTR, "MS_409")]
    arrays = [(V.VT_I1, [-1, 2]), (V.VT_UI1, [1, 255]), (V.VT_I2, [1, -2]), (V.VT_UI2, [65535]),
              (V.VT_BOOL, [True, False]), (V.VT_I4, [-1, 5]), (V.VT_UI4, [7]), (V.VT_R4, [0.5, -4.0]),
              (V.VT_R8, [1e300]), (V.VT_BSTR, ["a", "", "bc"]), (V.VT_NULL, [None, None])]
    props = [c.ContextProperty(f"p{t}", t, v) for t, v in scalars]
    props += [c.ContextProperty(f"a{t}", c.VT_ARRAY | t, v) for t, v in arrays]
    props += [c.ContextProperty("__Target", V.VT_UNKNOWN, inst, objref=o) for o in (False, True)]
    props += [c.ContextProperty("objects", c.VT_ARRAY | V.VT_UNKNOWN, [cls, inst], objref=o) for o in (False, True)]
    guid = uuid.UUID("5a0a8d4e-0b1c-4f9f-9f0d-6e7d8c9b0a1f")
    contexts = [c.WbemContext([guid], [p]) for p in props] + [c.WbemContext([guid], props[:11]),
                                                                c.WbemContext([], [])]
    built = [build(ctx) for ctx in contexts for build in (c.build_context, c.build_context_objref)]
    return built + [s[:512] for s in _cut(b"MEOW", _stubs())]


def _seed_refresher() -> list[bytes]:
    from wmiscope.formats import refresher, wmio

    cls = _refresher_template()
    instances = [wmio.new_instance(cls, {"Handle": str(i), "ProcessId": i, "Name": f"p{i}.exe"}) for i in range(3)]
    sparse = wmio.new_instance(cls, {"Handle": "9", "Name": None})      # defaults and a NULL
    return [refresher.build_instance_blob(instances), refresher.build_refreshed_single_instance(instances[0]),
            refresher.build_instance_blob([]), refresher.build_instance_blob([sparse]),
            refresher.build_refreshed_single_instance(sparse)]


_SEEDERS = {name: globals()[f"_seed_{name}"] for name in LAYERS}


def all_seeds(limit: int = 60) -> list[bytes]:
    return [bytes([i]) + s for i, layer in enumerate(LAYERS) for s in seeds(layer, limit)]


# --- running ---------------------------------------------------------------------------------
#
# A fuzzing run is two processes: libFuzzer in a child (it ends with exit(), so nothing
# after atheris.Fuzz() runs), and this one, which reads the child's output and appends
# what the run did to LAYER/campaign.jsonl in the work directory. The corpus and that log
# stay between runs, so a campaign is any number of runs, resumed where it stopped; `report`
# sums them.

_CHILD = "WMISCOPE_FUZZ_CHILD"
_ARTEFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")


def _fuzz_here(layer: str, workdir: Path, opts: list[str], extra: list[str]) -> int:
    """The libFuzzer process: instrument our code, seed, fuzz (never returns when fuzzing)."""
    import atheris

    # Only our own code is instrumented: coverage of construct or scapy would steer
    # the fuzzer into libraries we do not own, and cost time.
    with atheris.instrument_imports(include=["wmiscope"]):
        import wmiscope.commands.output  # noqa: F401
        import wmiscope.dissectors.pipeline  # noqa: F401
        import wmiscope.formats.refresher  # noqa: F401
    target = h_all if layer == "all" else HARNESSES[layer]
    work = workdir / layer
    work.mkdir(parents=True, exist_ok=True)      # libFuzzer writes its artefacts there
    inputs = [a for a in extra if not a.startswith("-")]
    if not inputs:      # fuzzing (not replaying given files): seed and keep a corpus
        seed_dir, corpus = work / "seeds", work / "corpus"
        seed_dir.mkdir(parents=True, exist_ok=True)
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(seed_dir.iterdir()):
            for i, s in enumerate(all_seeds() if layer == "all" else seeds(layer)):
                (seed_dir / f"seed-{i:04d}").write_bytes(s)
        inputs = [str(corpus), str(seed_dir)]
    max_len = max(MAX_LEN.values()) if layer == "all" else MAX_LEN[layer]
    base = ["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={work}{os.sep}",
            f"-max_len={max_len}"]
    flags = [a for a in extra if a.startswith("-")]
    # libFuzzer reads the process's own argv too, and runs argv[0] (through the shell) with
    # its options for -minimize_crash and the like: that command must come back to this layer.
    again = shlex.join([sys.executable, str(Path(__file__).resolve()), layer, "--workdir", str(workdir), "--"])
    sys.argv = [again, *base, *opts, *flags, *inputs]
    atheris.Setup(sys.argv, lambda data: target(bytes(data)))
    atheris.Fuzz()
    return 0


def _artefacts(work: Path) -> set[str]:
    return {p.name for p in work.glob("*") if p.name.startswith(_ARTEFACTS)} if work.is_dir() else set()


def _commit() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+changes" if dirty else "") if head else "unknown"


_RUNNING: dict = {}     # child process -> layer, for a stop request to reach every libFuzzer


def run(layer: str, workdir: Path, *, seconds=None, runs=None, seed=None, extra=(), echo=True) -> dict:
    """One libFuzzer run of `layer` in a child process; its outcome appended to the log."""
    import subprocess
    import time

    work = workdir / layer
    work.mkdir(parents=True, exist_ok=True)
    before = _artefacts(work)
    argv = [sys.executable, str(Path(__file__).resolve()), layer, "--workdir", str(workdir)]
    argv += [f"--seconds={seconds}"] * bool(seconds) + [f"--runs={runs}"] * (runs is not None)
    argv += [f"--seed={seed}"] * (seed is not None) + ["--", *extra] * bool(extra)
    started, commit = time.time(), _commit()      # the code the child runs
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                             env={**os.environ, _CHILD: "1"})
    _RUNNING[child] = layer
    stats, first, last, tail = {}, None, None, []
    try:
        with (work / "last-run.log").open("w") as log:
            for line in child.stdout:
                if echo:
                    sys.stderr.write(line)
                log.write(line)
                m = _STATUS.match(line)
                if m:
                    last = m
                    if m.group(2) == "INITED":
                        first = m
                elif _STAT.match(line):
                    k, v = _STAT.match(line).groups()
                    stats[k] = int(v)
                tail = (tail + [line])[-40:]
        # wait4: the child's own CPU time, a speed that does not depend on what else runs
        _, status, usage = os.wait4(child.pid, 0)
        code = child.returncode = os.waitstatus_to_exitcode(status)
    finally:
        _RUNNING.pop(child, None)
    new = sorted(_artefacts(work) - before)
    corpus = [p.stat().st_size for p in (work / "corpus").iterdir()] if (work / "corpus").is_dir() else []
    executions = stats.get("number_of_executed_units", int(last.group(1)) if last else 0)
    took, cpu = time.time() - started, usage.ru_utime + usage.ru_stime
    rec = {"layer": layer, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "seconds": round(took, 1), "cpu_seconds": round(cpu, 1), "executions": executions,
           "exec_per_s": round(executions / took) if took else 0, "exec_per_cpu_s": round(executions / cpu) if cpu else 0,
           "cov": int(last.group(3)) if last else None, "ft": int(last.group(4)) if last else None,
           "inited_cov": int(first.group(3)) if first else None, "inited_ft": int(first.group(4)) if first else None,
           "new_units": stats.get("new_units_added"), "peak_rss_mb": stats.get("peak_rss_mb"),
           "corpus_files": len(corpus), "corpus_bytes": sum(corpus), "max_len": MAX_LEN.get(layer),
           "crashes": [n for n in new if n.startswith(("crash-", "leak-"))],
           "timeouts": [n for n in new if n.startswith(("timeout-", "slow-unit-"))],
           "ooms": [n for n in new if n.startswith("oom-")], "exit": code, "commit": commit}
    if code == 130:     # stopped (SIGINT, atheris's exit): no final stats, the last status line counts
        rec["interrupted"] = True
    elif code and not new:
        rec["failure"] = "".join(tail)[-2000:]
    with (work / "campaign.jsonl").open("a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def history(workdir: Path, layer: str) -> list[dict]:
    path = workdir / layer / "campaign.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def totals(workdir: Path, layer: str) -> dict:
    runs = history(workdir, layer)
    last = next((r for r in reversed(runs) if r.get("cov") is not None), {})
    corpus = workdir / layer / "corpus"
    files = [p.stat().st_size for p in corpus.iterdir()] if corpus.is_dir() else []
    execs, secs = sum(r["executions"] for r in runs), sum(r["seconds"] for r in runs)
    timed = [r for r in runs if "cpu_seconds" in r]
    cpu_execs, cpu = sum(r["executions"] for r in timed), sum(r["cpu_seconds"] for r in timed)
    return {"layer": layer, "runs": len(runs), "executions": execs, "seconds": round(secs),
            "exec_per_s": round(execs / secs) if secs else 0, "exec_per_cpu_s": round(cpu_execs / cpu) if cpu else None, "cov": last.get("cov"), "ft": last.get("ft"),
            "crashes": sum(len(r["crashes"]) for r in runs), "timeouts": sum(len(r["timeouts"]) for r in runs),
            "ooms": sum(len(r["ooms"]) for r in runs), "failures": sum("failure" in r for r in runs),
            "corpus_files": len(files), "corpus_kb": round(sum(files) / 1024),
            "commits": sorted({r["commit"] for r in runs})}


def report(workdir: Path, layers=LAYERS, markdown: bool = False) -> str:
    cols = ("layer", "runs", "executions", "seconds", "exec_per_s", "exec_per_cpu_s", "cov", "ft", "crashes",
            "timeouts", "ooms", "failures", "corpus_files", "corpus_kb", "commits")
    rows = [cols] + [tuple(str(t[c] if c != "commits" else ",".join(t[c])) for c in cols)
                     for t in (totals(workdir, layer) for layer in layers)]
    if markdown:
        rows.insert(1, tuple("---" for _ in cols))
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in rows)


def campaign(layers, workdir: Path, *, target: int, slice_s: int, until=None, jobs: int = 1, seed=None,
             extra=()) -> int:
    """Runs of `slice_s` seconds, the layer nearest to its target in time first, until
    every layer has `target` executions (summed over every run in the log) or `until`
    (a time.time()) comes. `jobs` runs go at once, each on another layer."""
    import signal
    import threading
    import time

    stop = threading.Event()
    lock = threading.Lock()
    busy: set = set()

    def on_signal(signum, frame):
        stop.set()
        for child in list(_RUNNING):
            child.send_signal(signal.SIGINT)     # libFuzzer prints its final stats and ends

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def next_layer():
        # A layer never run goes first (its speed is not known yet), then the one nearest
        # to its target in time: as many layers as can reach the target do.
        with lock:
            todo = []
            for layer in layers:
                t = totals(workdir, layer)
                if layer not in busy and t["executions"] < target:
                    left = target - t["executions"]
                    todo.append((bool(t["runs"]), left / max(t["exec_per_s"], 1), layer, left))
            if not todo:
                return None, 0
            _, _, layer, left = min(todo)
            busy.add(layer)
            return layer, left

    def worker():
        while not stop.is_set():
            left = slice_s if until is None else min(slice_s, int(until - time.time()))
            if left < 30:
                return
            layer, remaining = next_layer()
            if layer is None:
                return
            try:
                rec = run(layer, workdir, seconds=left, runs=remaining, seed=seed, extra=extra, echo=False)
            finally:
                with lock:
                    busy.discard(layer)
            found = rec["crashes"] + rec["timeouts"] + rec["ooms"]
            print(f"{rec['started']} {layer}: {rec['executions']} executions in {rec['seconds']} s, "
                  f"cov {rec['cov']} ft {rec['ft']}, corpus {rec['corpus_files']}"
                  + (f", FOUND {' '.join(found)}" if found else "")
                  + (f", exit {rec['exit']}" if "failure" in rec else ""), file=sys.stderr, flush=True)
            if "failure" in rec:        # the harness itself cannot start: no point in retrying it
                stop.set()

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
        time.sleep(1)       # the first child writes the seeds; the next ones find them
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.5)
    print(report(workdir, layers))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layer", nargs="?", choices=(*LAYERS, "all", "campaign", "report"))
    ap.add_argument("layers", nargs="*", metavar="LAYER",
                    help="campaign, report: the layers (default all nine)")
    ap.add_argument("--seconds", type=int, help="stop after this many seconds")
    ap.add_argument("--runs", type=int, help="stop after this many executions")
    ap.add_argument("--seed", type=int, help="libFuzzer's random seed (a fixed one replays a run)")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".fuzz",
                    help="seeds, corpus, artefacts and the log of runs, per layer (default .fuzz)")
    ap.add_argument("--target", type=int, default=1_000_000, help="campaign: executions per layer (default 1000000)")
    ap.add_argument("--slice", type=int, default=900, help="campaign: seconds per run (default 900)")
    ap.add_argument("--until", help="campaign: stop by this UTC time (HH:MM)")
    ap.add_argument("--jobs", type=int, default=1, help="campaign: runs at once, each on another layer")
    ap.add_argument("--markdown", action="store_true", help="report: as a Markdown table")
    ap.add_argument("--list", action="store_true", help="name the layers and stop")
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = ap.parse_intermixed_args(ours)      # after --: options and inputs for libFuzzer
    if args.list or not args.layer:
        print("\n".join((*LAYERS, "all")))
        return 0
    layers = list(args.layers or LAYERS)
    if args.layers and (args.layer not in ("campaign", "report") or not set(layers) <= set(LAYERS)):
        ap.error(f"only campaign and report take layers, among: {', '.join(LAYERS)}")
    if args.layer == "report":
        print(report(args.workdir, layers, args.markdown))
        return 0
    if args.layer == "campaign":
        return campaign(layers, args.workdir, target=args.target, slice_s=args.slice, until=_utc(args.until),
                        jobs=args.jobs, seed=args.seed, extra=extra)
    opts = [f"-max_total_time={args.seconds}"] * bool(args.seconds) + [f"-runs={args.runs}"] * (args.runs is not None)
    opts += [f"-seed={args.seed}"] * (args.seed is not None)
    if os.environ.get(_CHILD) or any(not a.startswith("-") for a in extra):     # fuzzing here, or replaying files
        return _fuzz_here(args.layer, args.workdir, opts, extra)
    rec = run(args.layer, args.workdir, seconds=args.seconds, runs=args.runs, seed=args.seed, extra=extra)
    return 0 if rec["exit"] in (0, 130) and not (rec["crashes"] or rec["timeouts"] or rec["ooms"]) else 1


def _utc(hhmm: str | None):
    """The next time.time() at which the UTC clock reads HH:MM."""
    if hhmm is None:
        return None
    import time

    h, m = map(int, hhmm.split(":"))
    now = time.time()
    at = now - now % 86400 + h * 3600 + m * 60
    return at if at > now else at + 86400


if __name__ == "__main__":
    sys.exit(main())
