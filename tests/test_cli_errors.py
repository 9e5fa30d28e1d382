"""A user's mistakes end in one line, never a traceback (issue 12).

Every capture-reading command is run on the odd inputs a new user tries first:
the line on stderr says what and where, the exit status is 2 for a usage error and
1 for input that cannot be read, and nothing at all is written on stdout (the
`calls` table's head included). Ctrl-C on a live capture flushes and summarises.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from test_capture import loopback_exchange
from tshark_util import PCAPS
from wmiscope.cli import main

SAMPLE = str(PCAPS / "wmi-process-create.pcap")
COMMANDS = ("calls", "stats", "transcript", "report")


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    (d / "empty.pcap").write_bytes(b"")
    (d / "notes.txt").write_text("these are my notes, not a capture\n")
    with open(d / "zeros.pcap", "wb") as f:      # 100 MB of zeros, sparse on disk
        f.truncate(100 << 20)
    (d / "a-directory").mkdir()
    (d / "bad.credentials").write_text("password CORP\\alice\nfoo bar\n")
    (d / "bad.keytab").write_bytes(b"\x05\x02" + b"\xff" * 7)
    return d


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:         # argparse's own exit, through our one-line error()
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(result, status: int, *needles: str) -> None:
    rc, out, err = result
    assert (rc, out) == (status, ""), (rc, out, err)
    assert err.startswith("wmiscope: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


CASES = [
    # (argv after the command, exit status, what the line must say)
    (["{d}/missing.pcap"], 1, ["missing.pcap", "No such file"]),
    (["{d}/a-directory"], 1, ["a-directory", "no capture files"]),     # a folder is a capture set: of none
    (["{d}/empty.pcap"], 1, ["empty.pcap", "too short"]),
    (["{d}/notes.txt"], 1, ["notes.txt", "not a pcap or pcapng file"]),
    (["/dev/null"], 1, ["/dev/null", "too short"]),
    (["{d}/zeros.pcap"], 1, ["zeros.pcap", "not a pcap or pcapng file"]),
    ([SAMPLE, "--credentials", "{d}/bad.credentials"], 1, ["bad.credentials:1"]),
    ([SAMPLE, "--credentials", "{d}/missing.credentials"], 1, ["missing.credentials", "No such file"]),
    ([SAMPLE, "--keytab", "{d}/bad.keytab"], 1, ["bad.keytab"]),
    ([SAMPLE, "--keytab", "{d}/a-directory"], 1, ["a-directory"]),
    (["-i", "nosuchif0"], 2, ["nosuchif0", "no network interface"]),
    ([], 2, ["CAPTURE", "--interface"]),
    ([SAMPLE, "-i", "lo"], 2, ["one of the two"]),
    ([SAMPLE, "-c", "-3"], 2, ["--count"]),
    ([SAMPLE, "--no-such-option"], 2, ["--no-such-option"]),
    ([SAMPLE, "-a", "duration:10"], 2, ["apply to a live capture"]),
    (["-i", "lo", "-a", "duration:inf"], 2, ["duration:SECONDS"]),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("argv,status,needles", CASES, ids=[" ".join(c[0])[-40:] or "none" for c in CASES])
def test_odd_inputs_give_one_line(capsys, odd, command, argv, status, needles):
    argv = [a.format(d=odd) for a in argv]
    assert_one_line(run_cli(capsys, command, *argv), status, *needles)


def test_decode_on_odd_inputs(capsys, odd):
    assert_one_line(run_cli(capsys, "decode", odd / "a-directory", "--as", "context"), 1, "is a directory")
    assert_one_line(run_cli(capsys, "decode", odd / "missing.bin", "--as", "context"), 1, "No such file")
    assert_one_line(run_cli(capsys, "decode", "/dev/null", "--as", "object-array"), 1, "ObjectArray")
    assert_one_line(run_cli(capsys, "decode", odd / "empty.pcap", "--as", "instance-blob"), 2, "--template")


def test_a_good_capture_still_works(capsys):
    rc, out, err = run_cli(capsys, "calls", SAMPLE)
    assert rc == 0 and err == "" and "IWbemServices::ExecMethod" in out


def subprocess_cli(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "wmiscope", *map(str, argv)], capture_output=True, text=True,
                          **kw)


def test_as_a_process_the_line_and_status_are_the_same(odd):
    p = subprocess_cli("calls", odd / "notes.txt")
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr == "wmiscope: error: " + str(odd / "notes.txt") + ": not a pcap or pcapng file (magic 74686573)\n"


def test_broken_pipe_is_silent():
    head = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    p = subprocess.run([sys.executable, "-m", "wmiscope", "transcript", SAMPLE, "--all", "--mof"],
                       stdout=head.stdin, stderr=subprocess.PIPE, text=True)
    head.stdin.close()
    head.wait()
    assert p.returncode == 0 and p.stderr == ""


def _packet_sockets(pid: int) -> list[int]:
    """The receive-queue sizes (Rmem) of the process's AF_PACKET sockets: it has read
    what was captured once its queue is empty."""
    try:
        rows = [line.split() for line in open("/proc/net/packet").read().splitlines()[1:]]
        fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return []
    return [int(r[6]) for r in rows if f"socket:[{r[8]}]" in fds]


def _wait(p, condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_ctrl_c_on_a_live_capture_flushes_and_summarises():
    """`calls -i lo`: a TCP exchange is captured, then Ctrl-C: the summary counts its
    frames, the exit status is 0 and there is no traceback (needs capture rights)."""
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        probe.close()
    except (PermissionError, AttributeError, OSError):
        pytest.skip("no packet sockets here")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    # The raw-socket capture, whose queue this test can watch in our own process (the
    # dumpcap path's Ctrl-C is tests/test_live_capture.py's).
    p = subprocess.Popen([sys.executable, "-m", "wmiscope", "stats", "-i", "lo", "-f", f"tcp port {port}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "WMISCOPE_CAPTURE": "socket"})
    try:
        started = p.stderr.readline()          # said once the socket is open and filtered
        assert started.startswith("wmiscope: capturing on lo"), started + p.stderr.read()
        loopback_exchange(srv, port)
        _wait(p, lambda: _packet_sockets(p.pid) == [0], "the capture has read every frame")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        srv.close()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in err, err
    frames = int(out.split("frames", 1)[1].split()[0])
    assert frames >= 3, out          # handshake and data at least: what was read was counted
