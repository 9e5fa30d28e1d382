"""Live capture through dumpcap as an unprivileged user, saved with -w, read back.

The test gives a fresh system user the capture rights Debian's wireshark-common
gives the ``wireshark`` group (a dumpcap that only that group may run, with the
cap_net_raw and cap_net_admin file capabilities), runs ``wmiscope calls -i lo
-w FILE`` as that user, replays a sample WMI session over real loopback TCP
connections, stops wmiscope with Ctrl-C (SIGINT), and checks: the live decode has
the sample's calls, and the saved file reads back to the same calls.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tshark_util import PCAPS
from wmiscope.dissectors.capture import open_capture, tcp_segment
from wmiscope.dissectors.live import PcapngWriter

SAMPLE = PCAPS / "wmi-process-create.pcap"
USER = "wmiscope-capture-test"
GROUP = "wmiscope-capture-test"


def replay_over_loopback(path, host="127.0.0.1") -> int:
    """Sends the TCP payloads of every connection of a capture over real loopback
    connections, in the capture's order; the original port 135 is kept when it can be
    bound (the DCOM activation port), others are the kernel's. Returns connections made."""
    conns: dict[tuple, tuple[socket.socket, socket.socket]] = {}
    readers = []
    servers = []

    def drain(s):
        while s.recv(65536):
            pass

    for _, _, lt, data in open_capture(path):
        seg = tcp_segment(lt, data)
        if seg is None:
            continue
        fwd, rev = (seg.src, seg.sport, seg.dst, seg.dport), (seg.dst, seg.dport, seg.src, seg.sport)
        if fwd not in conns and rev not in conns:
            if not (seg.flags & 0x02 and not seg.flags & 0x10):     # only connections seen from their SYN
                continue
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                srv.bind((host, seg.dport))
            except OSError:
                srv.bind((host, 0))
            srv.listen(1)
            servers.append(srv)
            client = socket.create_connection(srv.getsockname())
            server, _ = srv.accept()
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = threading.Thread(target=drain, args=(s,), daemon=True)
                t.start()
                readers.append(t)
            conns[fwd] = (client, server)
        if seg.payload:
            if fwd in conns:
                conns[fwd][0].sendall(seg.payload)
            else:
                conns[rev][1].sendall(seg.payload)
    for client, server in conns.values():
        client.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)
    for t in readers:
        t.join(5)
    for s in [s for pair in conns.values() for s in pair] + servers:
        s.close()
    return len(conns)


def _last_payload(path) -> bytes:
    payloads = [seg.payload for _, _, lt, data in open_capture(path) if (seg := tcp_segment(lt, data)) and seg.payload]
    return payloads[-1][-64:]


def _calls(jsonl: str) -> list[tuple]:
    out = []
    for line in jsonl.splitlines():
        d = json.loads(line)
        if d["type"] == "call":
            out.append((d["interface"], d["method"], d["outcome"], json.dumps(d.get("decoded"), sort_keys=True)))
    return out


def _capture_rights_user(tmp: Path, created: list):
    """(uid, gid, bin dir holding a dumpcap this user may capture with), or a skip reason.
    The user and group it had to create are added to ``created`` (commands that remove them)."""
    dumpcap = shutil.which("dumpcap")
    if dumpcap is None:
        return "dumpcap is not installed (it comes with tshark)"
    if os.geteuid() != 0:
        return "creating a capture user needs root (CI runs as root)"
    if not (shutil.which("useradd") and shutil.which("setcap")):
        return "useradd or setcap missing (packages passwd, libcap2-bin)"
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "-r", GROUP], check=True)
        created.append(("groupdel", GROUP))
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "-g", GROUP, USER], check=True)
        created.insert(0, ("userdel", USER))
    bindir = tmp / "bin"
    bindir.mkdir()
    copy = bindir / "dumpcap"
    shutil.copy2(dumpcap, copy)
    # What wireshark-common does when users may capture: root:wireshark 0750 + file capabilities.
    os.chown(copy, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(copy, 0o750)
    if subprocess.run(["setcap", "cap_net_raw,cap_net_admin+eip", str(copy)], capture_output=True).returncode:
        return "setcap refused on this file system"
    return pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid, bindir


def _user_python(become_user) -> list[str] | str:
    """A command that runs wmiscope as the capture user: this interpreter if the user may
    run it, else the system's Python of the same version with our site-packages added
    (a pyenv interpreter under /root is out of an ordinary user's reach)."""
    site_dir = sysconfig.get_paths()["purelib"]
    boot = f"import site, sys; site.addsitedir({site_dir!r}); from wmiscope.cli import main; sys.exit(main())"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for py in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if py is None:
            continue
        cmd = [py, "-c", boot]
        try:
            ok = subprocess.run(cmd + ["--version"], preexec_fn=become_user, capture_output=True, cwd="/",
                                timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return cmd
    return f"no {version} interpreter that an unprivileged user may run with wmiscope's packages"


def test_live_capture_through_dumpcap_as_an_unprivileged_user():
    tmp = Path(tempfile.mkdtemp(prefix="wmiscope-live-"))
    created: list[tuple[str, str]] = []
    try:
        got = _capture_rights_user(tmp, created)
        if isinstance(got, str):
            pytest.skip(got)
        uid, gid, bindir = got
        os.chmod(tmp, 0o755)
        out_dir = tmp / "out"
        out_dir.mkdir()
        os.chown(out_dir, uid, gid)
        saved = out_dir / "live.pcapng"

        def become_user():
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)

        wmiscope = _user_python(become_user)
        if isinstance(wmiscope, str):
            pytest.skip(wmiscope)
        env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "HOME": str(out_dir)}
        env.pop("WMISCOPE_CAPTURE", None)
        cmd = wmiscope + ["calls", "--format", "jsonl", "-i", "lo",
               "-f", "tcp and host 127.0.0.1", "-w", str(saved), "-a", "duration:60"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=become_user, cwd=str(out_dir))
        try:
            said = []
            for line in proc.stderr:
                said.append(line)
                if line.startswith("wmiscope: capturing on lo"):
                    break
            else:
                pytest.fail("wmiscope did not start capturing: " + "".join(said))
            assert "through dumpcap" in said[-1]
            assert replay_over_loopback(SAMPLE) >= 1
            # The saved file is flushed as packets come: once it holds the session's last
            # octets, everything was captured (dumpcap may otherwise stop before reading the
            # kernel's buffer). The deadline only guards against a hang.
            last = _last_payload(SAMPLE)
            deadline = time.monotonic() + 30
            while last not in saved.read_bytes() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)     # a clean stop: decode what was captured, close the file
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, stderr
        live = _calls(stdout)
        assert live, stderr
        assert os.stat(saved).st_uid == uid
        # The saved file, read back, decodes to the same calls.
        back = subprocess.run([sys.executable, "-m", "wmiscope", "calls", "--format", "jsonl", str(saved)],
                              capture_output=True, text=True, check=True).stdout
        assert _calls(back) == live
        # ... which are the sample's own.
        original = subprocess.run([sys.executable, "-m", "wmiscope", "calls", "--format", "jsonl", str(SAMPLE)],
                                  capture_output=True, text=True, check=True).stdout
        assert [c[:3] for c in live] == [c[:3] for c in _calls(original)]
        assert any(c[1] == "ExecMethod" and "CommandLine" in c[3] for c in live)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for command, name in created:          # leave the machine's users as they were
            subprocess.run([command, name], capture_output=True)


def test_pcapng_writer_reads_back():
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "w.pcapng")
        frames = [(ts, lt, data) for _, ts, lt, data in open_capture(SAMPLE)]
        w = PcapngWriter(p)
        for ts, lt, data in frames:
            w.write(ts, lt, data)
        w.close()
        back = [(round(ts, 6), lt, data) for _, ts, lt, data in open_capture(p)]
        assert back == [(round(ts, 6), lt, data) for ts, lt, data in frames]


def test_autostop_and_write_options_are_checked(capsys):
    from wmiscope import cli

    # usage errors: one line on stderr, exit status 2 (issue 12's contract)
    assert cli.main(["calls", "-i", "lo", "-a", "filesize:10"]) == 2
    assert "duration:SECONDS" in capsys.readouterr().err
    assert cli.main(["calls", str(SAMPLE), "-w", "x.pcapng"]) == 2
    assert "live capture" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dumpcap", "socket"])
def test_duration_ends_a_quiet_capture(method):
    """-a duration:N stops a capture that sees no packet at all (no hang waiting for one)."""
    if method == "dumpcap" and shutil.which("dumpcap") is None:
        pytest.skip("dumpcap is not installed")
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root here (the dumpcap test covers unprivileged users)")
    env = {**os.environ, "WMISCOPE_CAPTURE": method}
    done = subprocess.run([sys.executable, "-m", "wmiscope", "stats", "--json", "-i", "lo", "-f", "tcp port 9",
                           "-a", "duration:1"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["frames"] == 0
    assert f"through {method}" in done.stderr
