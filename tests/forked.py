"""Node processes forked from one interpreter that has already imported the node.

The network fault bench starts nodes a few thousand times (every seed's network, and
1,000 restarts in the kill cycles alone); each ``python -m timefast`` spends about
0.4 CPU-seconds starting the interpreter and importing the package before the node
does anything, close to half of the whole bench's CPU on two cores.  A ``Forker``
keeps one server process that has imported ``timefast.__main__`` and uvloop (and
frozen what they made, so that children share those pages), and forks each node from
it: after the fork the child takes its own environment and output pipe and runs the
node's own ``main``, in its own process with its own pid, killed, paused and resumed
by real signals.  Only the imports are shared, done once.  Nodes that need a fresh
``exec`` (a library preloaded by ``LD_PRELOAD``, as the clock-skew runs do) are not
forked.

The server speaks JSON lines on a socket pair: the harness sends ``{"env": ...}``
with the write end of the node's output pipe attached (SCM_RIGHTS) and gets
``{"pid": n}``; the server reaps its children and sends ``{"exit": pid, "code": c}``
(``c`` is ``-signal`` when a signal ended the node, as ``subprocess`` has it).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import orjson

ROOT = Path(__file__).resolve().parent.parent


# -- the server (its own process) ------------------------------------------------------


def serve(fd: int) -> None:
    """The fork server's loop on socket ``fd``, until the harness closes it."""
    import gc

    import uvloop  # noqa: F401  (imported here once, for every child)

    import timefast.__main__  # noqa: F401
    gc.collect()
    gc.freeze()  # the children's collectors never walk (and so never copy) these pages
    sock = socket.socket(fileno=fd)
    buf = b""
    pipes: list[int] = []  # output pipes come with their requests, maybe before the end
    while True:
        readable, _, _ = select.select([sock], [], [], 0.05)
        with contextlib.suppress(ChildProcessError):  # none forked yet, or all reaped
            while (done := os.waitpid(-1, os.WNOHANG))[0]:  # the harness hears each exit
                code = os.waitstatus_to_exitcode(done[1])
                sock.sendall(orjson.dumps({"exit": done[0], "code": code}) + b"\n")
        if not readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        if not data:
            return
        buf += data
        pipes += fds
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out = pipes.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(sock, out, orjson.loads(line)["env"])
            os.close(out)
            sock.sendall(orjson.dumps({"pid": pid}) + b"\n")


def _child(sock: socket.socket, out: int, env: dict[str, str]) -> None:
    """After the fork: output to ``out``, environment ``env``, the node's ``main``."""
    code = 1
    try:
        sock.close()
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["time-masternode"]
        from timefast.__main__ import main
        code = main([])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# -- the harness's side ----------------------------------------------------------------


class ForkedProcess:
    """The part of ``subprocess.Popen`` the node harness uses, for a forked node."""

    def __init__(self, pid: int, stdout: IO[str]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"node pid {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # gone since the check
                os.kill(self.pid, sig)


class Forker:
    """Forks node processes from one server process that imported the node once."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
             f"from tests.forked import serve; serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()])
        theirs.close()
        self._sock = ours
        self._lock = threading.Lock()
        self._pids: list[int] = []
        self._pid_ready = threading.Condition()
        self._procs: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}  # exits heard before their spawn returned
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._sock.makefile("rb"):
            msg = orjson.loads(line)
            with self._pid_ready:
                if "pid" in msg:
                    self._pids.append(msg["pid"])
                elif msg["exit"] in self._procs:
                    self._procs.pop(msg["exit"])._exit(msg["code"])
                else:
                    self._early[msg["exit"]] = msg["code"]
                self._pid_ready.notify_all()

    def spawn(self, env: dict[str, str]) -> ForkedProcess:
        """A node process with environment ``env``; its output on ``stdout``."""
        r, w = os.pipe()
        try:
            with self._lock:  # one spawn at a time: pids come back in order
                socket.send_fds(self._sock, [orjson.dumps({"env": env}) + b"\n"], [w])
                with self._pid_ready:
                    if not self._pid_ready.wait_for(lambda: self._pids, 30):
                        raise RuntimeError("the fork server did not answer")
                    pid = self._pids.pop(0)
                    proc = ForkedProcess(pid, os.fdopen(r, errors="replace"))
                    if pid in self._early:
                        proc._exit(self._early.pop(pid))
                    else:
                        self._procs[pid] = proc
        finally:
            os.close(w)
        return proc

    def cpu_seconds(self) -> float:
        """CPU time of the fork server and of every node it has reaped."""
        try:
            stat = Path(f"/proc/{self._server.pid}/stat").read_text()
        except OSError:
            return 0.0
        # utime, stime, cutime, cstime: fields 14-17, the 12th-15th after the name.
        fields = stat.rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """End the server (its nodes are the harness's to kill first)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # the reader's file keeps the fd open
        self._sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._server.wait(10)

