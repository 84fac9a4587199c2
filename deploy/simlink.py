"""A simulation SuperLink that a caller (`make flwr-run`, a test) starts, owns and stops (never anyone else's).

A caller starts its own simulation SuperLink rather than letting ``flwr`` start the shared
``:local:`` one (detached, on fixed ports, never stopped, and silently reused when somebody
else's is already running). Flower 1.41's SuperLink serves the Runtime, Control and Fleet
APIs on one HTTP port (``--host``/``--port``); the legacy gRPC Control/Fleet servers start
only under ``FLWR_INTERNAL_GRPC_*=1`` (removed from its environment here), there is no Fleet
server in simulation mode, and the gRPC health server only starts with
``--health-server-address`` (not given). So one free port on 127.0.0.1 is all it binds, and
it counts as ready only once *its* PID holds the listening socket on that port.

Clean-up. The SuperLink is started in a new session, so its process group (id = its PID)
is ours: SIGTERM, then SIGKILL. Flower's SuperLink starts its SuperExec with
``start_new_session=True``, outside that group, and the SuperExec starts the simulation and
Ray in its session. So the test notes (every second while ``flwr run`` runs, and again
before stopping) the sessions of the SuperLink's descendants, drops any it sees empty (a
session id stays reserved while one process has it), and after the group is gone ends, by
PID, whatever is still in those sessions. Nothing else is ever signalled.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

from deploy.procs import free_port, owns_listener, proc_table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 90.0  # two shared cores: importing the SuperLink alone takes seconds
STOP_TIMEOUT = 20.0
RUN_TIMEOUT = 400.0


def tail(*paths: Path, chars: int = 3000) -> str:
    out = []
    for p in paths:
        text = p.read_text(errors="replace") if p.exists() else "(missing)"
        out.append(f"--- {p.name} ---\n{text[-chars:]}")
    return "\n".join(out)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class _SuperLink:
    """A ``flower-superlink`` this test started, and the sessions of everything it started."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path, out: Path):
        self.proc, self.port, self.log, self.out = proc, port, log, out
        self.sessions = {proc.pid}  # start_new_session=True: session id = group id = its PID

    def tail(self) -> str:
        return tail(self.log, self.out)

    def record(self) -> None:
        """Note the sessions of the SuperLink's descendants; forget sessions seen empty."""
        table = proc_table()
        children = defaultdict(list)
        for pid, row in table.items():
            children[row.ppid].append(pid)
        # Walk from the SuperLink only while it is unreaped (its PID cannot be reused), and
        # from the members of sessions already noted (those ids are held by the members).
        stack = [pid for pid, row in table.items() if row.sid in self.sessions]
        if self.proc.returncode is None:
            stack.append(self.proc.pid)
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in seen or pid not in table:
                continue
            seen.add(pid)
            self.sessions.add(table[pid].sid)
            stack.extend(children[pid])
        self.sessions &= {row.sid for row in table.values()}

    def members(self) -> list[int]:
        """Live (non-zombie) processes in the noted sessions."""
        table = proc_table()
        self.sessions &= {row.sid for row in table.values()}
        return [
            pid
            for pid, row in table.items()
            if row.sid in self.sessions and row.state not in ("Z", "X") and pid != os.getpid()
        ]

    def stop(self) -> list[int]:
        """End the group we started, then what is left in the noted sessions; return survivors."""
        self.record()
        if self.proc.returncode is None:  # unreaped leader: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the SuperLink also stops its SuperExec
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # still unreaped after the timeout
            self.proc.wait(timeout=STOP_TIMEOUT)
        # SuperExec, simulation, Ray (whose agents ignore SIGTERM): each by PID, re-checked.
        for sig, grace in ((None, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in self.members() if sig is not None else ():
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while self.members() and time.monotonic() < deadline:
                time.sleep(0.2)
        return self.members()


def start_superlink(tmp: Path, env: dict[str, str]) -> _SuperLink:
    """Start ``flower-superlink`` (simulation, insecure, 127.0.0.1:<free port>) and wait for it.

    Retries with a new port if the chosen one was taken between choosing and binding; raises
    with the log tails if it never becomes ready.
    """
    for attempt in range(3):
        port = free_port()
        log, out = tmp / f"superlink-{attempt}.log", tmp / f"superlink-{attempt}.out"
        cmd = [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--database",
            str(tmp / f"state-{attempt}.db"),
            "--log-file",
            str(log),
            "--disable-runtime-dependency-installation",
        ]
        with out.open("wb") as fh:
            link = _SuperLink(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                port,
                log,
                out,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while time.monotonic() < deadline and link.proc.poll() is None:
                # Ready only once *our* process holds the listener: never talk to someone else's.
                if _healthy(port) and owns_listener(link.proc.pid, port):
                    return link
                time.sleep(0.3)
        except BaseException:  # e.g. KeyboardInterrupt: the caller never gets `link` to stop
            link.stop()
            raise
        link.stop()
        if link.proc.returncode is not None and "address already in use" in link.tail().lower():
            continue
        raise RuntimeError(
            f"flower-superlink (exit code {link.proc.returncode}) not ready on "
            f"127.0.0.1:{port} within {STARTUP_TIMEOUT:.0f}s\n" + link.tail()
        )
    raise RuntimeError("flower-superlink: no free port after 3 attempts\n" + link.tail())
