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

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.procs import Tree, free_port, owns_listener

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
    """A ``flower-superlink`` this caller started, and the sessions of everything it started
    (``deploy.procs.Tree``: noted while it runs, ended by PID and start time)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, out: Path):
        self.proc, self.port, self.log, self.out = proc, port, log, out
        self.tree = Tree()
        self.tree.add(proc)  # start_new_session=True: session id = group id = its PID

    def tail(self) -> str:
        """The end of the SuperLink's log and output."""
        return tail(self.log, self.out)

    def record(self) -> None:
        """Note the sessions of the SuperLink's descendants (the SuperExec, the simulation, Ray)."""
        self.tree.record()

    def stop(self) -> list[int]:
        """End the group we started, then what is left in the noted sessions; the PIDs that survived."""
        return [pid for pid, _ in self.tree.stop([self.proc], STOP_TIMEOUT)]


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
