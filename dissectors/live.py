"""Live capture: through dumpcap when it is installed, a raw socket otherwise.

`live_source(interface, bpf, count=, duration=, write=)` returns a `LiveCapture`:
an iterator of `RawFrame`s like a capture file's, that

* runs ``dumpcap -i IFACE -f BPF -n -w -`` (pcapng on its stdout, read by our own
  pcapng reader) when dumpcap is on PATH: dumpcap is the one program that needs
  capture rights (Debian's wireshark-common gives them to the ``wireshark`` group
  with file capabilities), so a member of that group needs no root, as with tshark;
* falls back to scapy's raw packet socket (root or CAP_NET_RAW) otherwise, or when
  ``WMISCOPE_CAPTURE=socket``;
* saves what it captures to ``write`` (pcapng) while it is decoded: the octets
  dumpcap sent, as they came, or the raw socket's frames in Enhanced Packet Blocks;
* stops cleanly after ``count`` frames, after ``duration`` seconds (both as
  dumpcap's ``-c`` and ``-a duration:N``), or on SIGINT (Ctrl-C): the capture is
  stopped, the frames already read are decoded to the end and the saved file is
  complete. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator

from .capture import RawFrame, open_capture

__all__ = ["live_source", "LiveCapture", "dumpcap_path", "PcapngWriter"]


def dumpcap_path() -> str | None:
    if os.environ.get("WMISCOPE_CAPTURE") == "socket":
        return None
    return shutil.which("dumpcap")


def live_source(interface: str, bpf: str = "tcp", *, count: int | None = None, duration: float | None = None,
                write: str | None = None) -> "LiveCapture":
    """A started live capture (errors such as missing rights are raised here, as OSError)."""
    dumpcap = dumpcap_path()
    if dumpcap is not None:
        capture = _DumpcapCapture(dumpcap, interface, bpf, count, duration, write)
    else:
        capture = _SocketCapture(interface, bpf, count, duration, write)
    # Said once the capture runs (a script can start its traffic on this line).
    sys.stderr.write(f"wmiscope: capturing on {interface} through {capture.method}"
                     + (f", saving to {write}" if write else "") + "\n")
    sys.stderr.flush()
    return capture


class LiveCapture:
    """Frames of a live capture; ``method`` is "dumpcap" or "socket"; ``frames`` counts them."""

    method = ""

    def __init__(self):
        self.frames = 0
        self._stopping = False
        self._previous = None

    def __iter__(self) -> Iterator[RawFrame]:
        return self._run()

    def _run(self) -> Iterator[RawFrame]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ends the capture; the frames already captured are still delivered."""
        self._stopping = True

    # SIGINT: a first Ctrl-C stops the capture cleanly, a second one interrupts.
    def _catch_sigint(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigint(signum, frame):
            if self._stopping:
                raise KeyboardInterrupt
            self.stop()
        self._previous = signal.signal(signal.SIGINT, on_sigint)

    def _release_sigint(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class _Tee:
    """A pipe's read() that also writes what it hands out to a file."""

    def __init__(self, f, out):
        self._f = f
        self._out = out

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._out.write(data)
            self._out.flush()       # the evidence is on disk as it comes, not at the end
        return data


class _DumpcapCapture(LiveCapture):
    method = "dumpcap"

    def __init__(self, dumpcap, interface, bpf, count, duration, write):
        super().__init__()
        cmd = [dumpcap, "-i", interface, "-n", "-w", "-"]
        if bpf:
            cmd += ["-f", bpf]
        if count:
            cmd += ["-c", str(count)]
        if duration:
            cmd += ["-a", f"duration:{max(1, round(duration))}"]
        self._out = open(write, "wb") if write else None
        # dumpcap's own messages ("Capturing on 'lo'", the packet count, a permission
        # error) go to our stderr as tshark's do. Its own process group: the terminal's
        # Ctrl-C reaches us, and we stop dumpcap so its last packets are flushed.
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                      start_new_session=True)
        self._stderr_lines: list[str] = []
        self._stderr_thread = threading.Thread(target=self._relay_stderr, daemon=True)
        self._stderr_thread.start()
        stream = self._proc.stdout if self._out is None else _Tee(self._proc.stdout, self._out)
        try:
            # Reads the section and interface headers: dumpcap writes them once capturing
            # has begun, or exits with its reason (no rights, no such interface).
            self._reader = open_capture(stream)
        except BaseException as exc:
            if not isinstance(exc, Exception):     # Ctrl-C before the first packet: stop dumpcap too
                self._proc.kill()
                self._proc.wait()
                self._close_out()
                raise
            self._proc.wait()
            self._stderr_thread.join(1)
            self._close_out()
            reason = " ".join(line for line in self._stderr_lines if not line.startswith("Capturing on")).strip()
            raise OSError(reason or f"dumpcap exited with status {self._proc.returncode}") from None

    def _relay_stderr(self) -> None:
        for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_lines.append(line)
            if line:
                sys.stderr.write(f"dumpcap: {line}\n")
                sys.stderr.flush()

    def stop(self) -> None:
        super().stop()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)      # dumpcap ends its file and its output cleanly

    def _run(self) -> Iterator[RawFrame]:
        self._catch_sigint()
        try:
            for frame in self._reader:
                self.frames += 1
                yield frame
        finally:
            self._release_sigint()
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._stderr_thread.join(1)
            self._close_out()

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    @property
    def errors(self):
        return self._reader.errors


class _SocketCapture(LiveCapture):
    method = "socket"

    def __init__(self, interface, bpf, count, duration, write):
        super().__init__()
        from .capture import live_capture
        self._frames = live_capture(interface, bpf, count, timeout=0.25, should_stop=self._should_stop)
        self._deadline = None if not duration else time.monotonic() + duration
        self._write = write

    def _should_stop(self) -> bool:
        return self._stopping or (self._deadline is not None and time.monotonic() >= self._deadline)

    def _run(self) -> Iterator[RawFrame]:
        self._catch_sigint()
        out = PcapngWriter(self._write) if self._write else None
        try:
            for frame in self._frames:
                self.frames += 1
                if out is not None:
                    out.write(frame[1], frame[2], frame[3])
                yield frame
        finally:
            self._release_sigint()
            self._frames.close()
            if out is not None:
                out.close()


class PcapngWriter:
    """A minimal pcapng file: a section, one interface per link type met, Enhanced Packet Blocks
    with microsecond timestamps (the default if_tsresol)."""

    def __init__(self, path):
        self._f = open(path, "wb")
        self._ifaces: dict[int, int] = {}
        self._f.write(self._block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))

    @staticmethod
    def _block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    def write(self, ts: float, linktype: int, data: bytes) -> None:
        ifid = self._ifaces.get(linktype)
        if ifid is None:
            ifid = self._ifaces[linktype] = len(self._ifaces)
            self._f.write(self._block(1, struct.pack("<HHI", linktype, 0, 262144)))
        ticks = int(round(ts * 1e6))
        self._f.write(self._block(6, struct.pack("<IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF,
                                                len(data), len(data)) + data))
        self._f.flush()

    def close(self) -> None:
        self._f.close()
