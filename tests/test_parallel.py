"""The analysis split by host pair (--workers, --dask) writes exactly what one process writes.

The capture is a set of real and sample sessions between different host pairs, shifted
to run at the same time and merged in time order, so that the workers' records
interleave and the WMI operations of different pairs alternate: the merge must restore
the single run's order and its op-N numbering.
"""

from __future__ import annotations

import heapq
import subprocess
import sys
from pathlib import Path

import pytest

from wmiscope.dissectors.capture import open_capture
from wmiscope.dissectors.parallel import ShardAnalysis
from wmiscope.synth.wire import PcapWriter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "captures"
SOURCES = [
    ROOT / "pcaps" / "wmi-async-query-callbacks.pcap",        # the server's callbacks to the client's sink
    ROOT / "pcaps" / "wmi-persistence-subscription.pcap",
    ROOT / "pcaps" / "wmi-process-create.pcap",
    ROOT / "pcaps" / "wmi-refresher.pcap",
    ROOT / "pcaps" / "spec-4.3.3.1-semisync-execquery-execmethod.pcap",
    SHARED / "LM_WMI_ProcessCallCreate.pcapng",
    SHARED / "impacket_wmiexec.pcapng",
]


@pytest.fixture(scope="module")
def capture_set(tmp_path_factory) -> Path:
    """The sources' Ethernet frames, each source moved to start at the same instant, merged by time."""
    streams = []
    for i, src in enumerate(SOURCES):
        frames = [f for f in open_capture(src) if f[2] == 1]
        t0 = frames[0][1]
        # A distinct microsecond offset per source keeps the merge order unambiguous.
        streams.append([(ts - t0 + 1_700_000_000 + i * 1e-6, data) for _, ts, _, data in frames])
    path = tmp_path_factory.mktemp("set") / "set.pcap"
    with PcapWriter(path) as out:
        for ts, data in heapq.merge(*streams, key=lambda f: f[0]):
            out.write(ts, data)
    return path


def wmiscope(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "wmiscope", *args], check=True, capture_output=True,
                          text=True, cwd=ROOT).stdout


@pytest.mark.parametrize("command", [("calls", "--format", "jsonl"), ("calls",), ("transcript", "--all")])
def test_workers_write_what_one_process_writes(capture_set, command):
    one = wmiscope(*command, str(capture_set), "--workers", "1")
    assert one.count("\n") > 50
    for n in ("2", "3"):
        assert wmiscope(*command, str(capture_set), "--workers", n) == one


@pytest.mark.parametrize("command", [("stats",), ("stats", "--json")])
def test_stats_of_workers_are_the_single_runs(capture_set, command):
    one = wmiscope(*command, str(capture_set), "--workers", "1")
    assert "calls" in one
    for n in ("2", "3"):
        assert wmiscope(*command, str(capture_set), "--workers", n) == one


@pytest.mark.parametrize("fmt", ["json", "html"])
def test_report_of_workers_is_the_single_runs(capture_set, fmt):
    """The report's builder correlates across host pairs: it stays in the parent and reads
    the workers' calls (and, for HTML, their excerpts) in the single run's order."""
    import re
    generated = re.compile(r'"generated":"[^"]*"|generated [0-9TZ:.+-]+')

    def report(n: str) -> str:
        return generated.sub("", wmiscope("report", str(capture_set), "--format", fmt, "--workers", n))

    one = report("1")
    assert "op-" in one and "T1047" in one
    assert report("2") == one


def test_operations_are_numbered_across_workers(capture_set):
    out = wmiscope("calls", "--format", "jsonl", str(capture_set), "--workers", "2")
    import json
    ids = [json.loads(line)["operation"]["id"] for line in out.splitlines()
           if '"operation":{' in line]
    numbers = sorted({int(i.split("-")[1]) for i in ids})
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 10


def test_each_shard_decodes_only_its_host_pairs(capture_set):
    """The split is real: the two shards' calls are disjoint and together are all calls."""
    seen = []
    for shard in (0, 1):
        a = ShardAnalysis(shard, 2, "t")
        calls = [rec for _, rec in a.run(str(capture_set)) if type(rec).__name__ == "Call"]
        assert all(a.shard_of_pair(c.client[0], c.server[0]) == shard for c in calls)
        seen.append({(c.conn, c.call_id) for c in calls})
        assert a.stats.frames > 0
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_dask_cluster_writes_what_one_process_writes(capture_set):
    distributed = pytest.importorskip("distributed")
    one = wmiscope("calls", "--format", "jsonl", str(capture_set), "--workers", "1")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="500MB") as cluster:
        out = wmiscope("calls", "--format", "jsonl", str(capture_set), "--dask", cluster.scheduler_address)
    assert out == one


def test_capture_set_of_files_splits_like_one_file():
    """A set of files (a folder and files beside it), merged in time order: the workers'
    records name their files and come out as one process writes them."""
    sources = [str(ROOT / "pcaps"), str(SHARED / "impacket_wmiexec.pcapng"), str(SHARED / "invoke-wmiexec.pcap")]
    one = wmiscope("calls", "--format", "jsonl", *sources, "--workers", "1")
    assert '"file":"invoke-wmiexec.pcap"' in one and '"file":"wmi-refresher.pcap"' in one
    assert wmiscope("calls", "--format", "jsonl", *sources, "--workers", "2") == one


def test_merge_keeps_order_ties_and_numbers_operations():
    """The parent's merge of keyed batches: runs cut where another shard's key comes first, a
    tie to the lower shard, tokens numbered in merged order, text strict UTF-8 cannot encode
    handed over as str (stdout's own error handler takes or refuses it, as in one process)."""
    from wmiscope.dissectors.parallel import ODD, OP, TEXT, _op_marker, merge, merge_bytes

    marker = _op_marker("n")

    def batch(*entries):
        items, blob = [], b""
        for key, kind, payload in entries:
            if kind == OP:
                items.append((key, OP, payload))
                continue
            data = payload.encode("utf-8", "surrogatepass")
            where = [len(blob) + i for i in range(len(data)) if data.startswith(marker, i)] or None
            items.append((key, kind, len(blob), len(blob) + len(data), where))
            blob += data
        return items, blob

    a = [batch(((0, 1, 1), TEXT, "a1\n"), ((0, 3, 2), OP, b"0.1~"), ((0, 3, 3), TEXT, "a3 op-~n.0.1~ x\n")),
         batch(((0, 5, 4), TEXT, "a5\n"), ((0, 6, 5), ODD, "a6 \udcff\n"))]
    b = [batch(((0, 2, 1), OP, b"1.1~"), ((0, 2, 2), TEXT, "b2 op-~n.1.1~\n"), ((0, 5, 4), TEXT, "b5\n"),
               ((1, -1, 5), TEXT, "b-end\n"))]
    want = ["a1\n", "b2 op-1\n", "a3 op-2 x\n", "a5\n", "b5\n", "a6 \udcff\n", "b-end\n"]
    assert list(merge([a, b], "n")) == want
    pieces = list(merge_bytes([a, b], "n"))
    assert [p for p in pieces if type(p) is str] == ["a6 \udcff\n"]
    assert "".join(p if type(p) is str else bytes(p).decode() for p in pieces) == "".join(want)


def test_idle_connections_count_alike_in_every_shard(tmp_path):
    """Copies of a sealed session one after another (scripts/bench_corpus.py): the
    connections each copy leaves open go idle and give back their buffers while later
    copies run. Only a connection's own shard knows whether its DCE/RPC layer keeps
    session state; another shard used to set it aside, and the split run's TCP counters
    (closed, dormant) differed from one process's."""
    import json
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_corpus

    path = tmp_path / "sealed.pcap"
    bench_corpus.build("sealed", path, 4_000_000, captures=SHARED)
    one = wmiscope("stats", "--json", str(path), "--workers", "1")
    assert json.loads(one)["tcp"]["idle_released"] > 0
    assert wmiscope("stats", "--json", str(path), "--workers", "2") == one


def test_a_worker_ahead_of_the_merge_is_read_and_spilled_in_order(capture_set, monkeypatch, capsys):
    """The parent reads every worker's pipe while it waits for one, so that a worker ahead
    of the merge never waits; past LocalRun.MEMORY octets a worker's messages go to a
    temporary file and come back in order. Here every message is spilled (small batches:
    the file is read back whole and starts over several times), and the output is still
    the single run's."""
    import functools

    from wmiscope import cli
    from wmiscope.dissectors import parallel

    one = wmiscope("calls", "--format", "jsonl", str(capture_set), "--workers", "1")
    monkeypatch.setattr(parallel, "shard_stream", functools.partial(parallel.shard_stream, batch=7))
    monkeypatch.setattr(parallel.LocalRun, "MEMORY", 0)
    spilled = []
    take = parallel._Inbox.take

    def counted(box):
        spilled.append(box.read_at < box.spilled)
        return take(box)

    monkeypatch.setattr(parallel._Inbox, "take", counted)
    capsys.readouterr()
    cli.main(["calls", "--format", "jsonl", str(capture_set), "--workers", "2"])
    assert capsys.readouterr().out == one
    assert sum(spilled) >= 5


def test_without_room_for_the_spill_a_worker_ahead_waits(capture_set, monkeypatch, capsys):
    """No temporary file can be written (a full TMPDIR): the parent holds a worker's messages
    in memory up to LocalRun.MEMORY and then leaves its pipe unread (the worker waits); the
    output is still the single run's, and nothing fails."""
    import errno
    import functools
    import tempfile

    from wmiscope import cli
    from wmiscope.dissectors import parallel

    one = wmiscope("calls", "--format", "jsonl", str(capture_set), "--workers", "1")
    monkeypatch.setattr(parallel, "shard_stream", functools.partial(parallel.shard_stream, batch=7))
    monkeypatch.setattr(parallel.LocalRun, "MEMORY", 1)

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_room)
    full = []
    is_full = parallel._Inbox.full

    def noted(box, memory):
        full.append(is_full(box, memory))
        return full[-1]

    monkeypatch.setattr(parallel._Inbox, "full", noted)
    capsys.readouterr()
    assert cli.main(["calls", "--format", "jsonl", str(capture_set), "--workers", "2"]) == 0
    assert capsys.readouterr().out == one
    assert any(full)


def _rpc_ptype(frame: bytes) -> int | None:
    """The PDU type of a DCE/RPC header at the start of an IPv4/TCP frame's payload."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    tcp = 14 + (frame[14] & 15) * 4
    payload = frame[tcp + (frame[tcp + 12] >> 4) * 4:]
    return payload[2] if len(payload) >= 16 and payload[0] == 5 and payload[1] <= 1 else None


@pytest.fixture(scope="module")
def resuming(tmp_path_factory) -> Path:
    """Copies of a clear session, every other one without its binds (seen from the middle,
    so its DCE/RPC layer keeps nothing when idle), each cut in two by 400 s of silence."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_corpus

    src = bench_corpus._Source(SHARED / "invoke-wmiexec.pcap")
    frames = []
    for c in range(120):
        copy = list(src.copy(c))
        if c % 2:
            copy = [(t, d) for t, d in copy if _rpc_ptype(d) not in (11, 12, 14, 15)]
        cut = int(len(copy) * (0.2 + 0.15 * (c % 5)))
        frames += [(1_700_000_000 + c * 3.0 + t + (400 if i >= cut else 0), d) for i, (t, d) in enumerate(copy)]
    path = tmp_path_factory.mktemp("resume") / "resume.pcap"
    with PcapWriter(path) as out:
        for ts, data in sorted(frames, key=lambda f: f[0]):
            out.write(ts, data)
    return path


def test_idle_connections_their_shard_closes_resume_alike(resuming):
    """The idle connections that keep nothing are closed and resume under their number;
    those with a bind are set aside. Only the owner's DCE/RPC layer knows which, while the
    process that reads the capture for the shards numbers and counts every connection
    (dissectors.routed): it waits for the shard's answer before anything could tell."""
    import json
    path = resuming
    one = wmiscope("stats", "--json", str(path), "--workers", "1")
    tcp = json.loads(one)["tcp"]
    assert tcp["dormant"] > 0 and tcp["resumed"] > 0 and tcp["idle_released"] > tcp["dormant"]
    assert wmiscope("stats", "--json", str(path), "--workers", "2") == one
    for command in (("calls", "--format", "jsonl"), ("transcript", "--all")):
        assert wmiscope(*command, str(path), "--workers", "2") == wmiscope(*command, str(path), "--workers", "1")


def test_a_failure_of_the_reading_process_is_reported(capture_set, monkeypatch, capsys):
    """The process that reads the capture for the shards fails: every shard hears of it and
    the run ends with the error, not waiting for ever."""
    from wmiscope import cli
    from wmiscope.dissectors import routed

    def broken(paths):
        raise OSError("the capture went away")

    monkeypatch.setattr(routed, "open_sources", broken)
    assert cli.main(["calls", "--format", "jsonl", str(capture_set), "--workers", "2"]) != 0
    assert "the capture went away" in capsys.readouterr().err


@pytest.mark.parametrize("bounds", [{"max_connections": 5}, {"dormant_memory": 2}, {"max_other_connections": 3},
                                    {"closed_memory": 4}])
def test_the_reassemblers_bounds_reached_split_alike(resuming, bounds, monkeypatch, capsys):
    """The TCP stage's tables at their bounds (evictions, forgotten idle connections, closed
    5-tuples forgotten): the reading process decides them as one process does, the idle
    checks settled first where their order could tell."""
    from wmiscope import cli
    from wmiscope.dissectors import tcp

    init = tcp.TcpReassembler.__init__

    def bounded(self, *args, **kwargs):
        init(self, *args, **{**kwargs, **bounds})

    monkeypatch.setattr(tcp.TcpReassembler, "__init__", bounded)
    outs = []
    for n in ("1", "2"):
        for command in (["stats", "--json"], ["calls", "--format", "jsonl"]):
            capsys.readouterr()
            assert cli.main([*command, str(resuming), "--workers", n]) == 0
            outs.append(capsys.readouterr().out)
    assert outs[:2] == outs[2:]
