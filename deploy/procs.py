"""The processes a fleet supervisor started, and nothing else: identities, sessions, stopping.

Modelled on ``deploy/simlink.py``. Every process the supervisor starts (SuperLink, each
SuperNode, each device's worker) gets a new session, so its process group (id = its PID) is ours
while the supervisor has not reaped it. Flower starts more in other places: the SuperLink starts its SuperExec with
``start_new_session=True`` (a session of its own, where the ServerApp processes then run), a
SuperNode starts its SuperExec and ClientApp processes in its own session. So ``Tree.record``
notes, every second, the sessions of the supervisor's children's descendants, and forgets a
session once it is seen empty (a session id stays reserved while one process has it, so a noted,
non-empty session is still the one we saw). ``Tree.stop`` ends each child's group (SIGTERM, then
SIGKILL), then whatever is left in the noted sessions, by PID.

A process is named across commands by its identity ``(pid, start time)``: the start time in clock
ticks since boot (``/proc/<pid>/stat`` field 22) tells a reused PID apart, so ``down`` never
signals a process that merely got the PID of one of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

Identity = tuple[int, int]  # (pid, start time in clock ticks since boot)


class Proc(NamedTuple):
    """One row of the process table."""

    ppid: int
    sid: int
    state: str
    start: int


def proc_table() -> dict[int, Proc]:
    """{pid: Proc} of every process, from ``/proc/<pid>/stat``."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(d)] = Proc(int(fields[1]), int(fields[3]), fields[0], int(fields[19]))
    return table


def identity(pid: int) -> Identity | None:
    """``(pid, start time)`` of a live process, None if there is none with that PID."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return pid, int(fields[19])


def alive(ident: Identity) -> bool:
    """True iff the process ``ident`` names still runs (same PID and start time, not a zombie)."""
    try:
        fields = Path(f"/proc/{ident[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return int(fields[19]) == ident[1] and fields[0] not in ("Z", "X")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (it may be taken before it is bound: callers retry)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def owns_listener(pid: int, port: int) -> bool:
    """True iff process ``pid`` holds a socket LISTENing on TCP ``port`` (any local address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[1].rsplit(":", 1)[1] == f"{port:04X}" and f[3] == "0A":
                    inodes.add(f[9])
    return _holds_socket(pid, inodes)


def owns_unix_listener(pid: int, path: Path) -> bool:
    """True iff process ``pid`` holds a Unix stream socket bound to ``path`` and LISTENing on it
    (``/proc/net/unix``: flag ``__SO_ACCEPTCON`` = 0x10000): a worker that listens is a ready one."""
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) >= 8 and f[7] == str(path) and int(f[3], 16) & 0x10000:
                inodes.add(f[6])
    return bool(inodes) and _holds_socket(pid, inodes)


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    """True iff one of ``pid``'s file descriptors is a socket with one of these inodes."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


def kill_identities(idents: list[Identity], grace: float = 5.0) -> list[Identity]:
    """SIGTERM, then SIGKILL, each process of ``idents`` still alive (by identity); return survivors."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in idents:
            if alive((pid, start)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while any(alive(i) for i in idents) and time.monotonic() < deadline:
            time.sleep(0.2)
    return [i for i in idents if alive(i)]


class Tree:
    """The children a supervisor started (each in a new session) and the sessions of their descendants."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        self.sessions: set[int] = set()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        """Own ``proc``, started with ``start_new_session=True`` (session id = group id = its PID)."""
        self.children.append(proc)
        self.sessions.add(proc.pid)

    def record(self) -> None:
        """Note the sessions of the children's descendants; forget sessions seen empty."""
        table = proc_table()
        kids = defaultdict(list)
        for pid, p in table.items():
            kids[p.ppid].append(pid)
        # Walk from unreaped children (their PIDs cannot be reused) and from the members of
        # sessions already noted (those ids are held by the members).
        stack = [pid for pid, p in table.items() if p.sid in self.sessions]
        stack += [c.pid for c in self.children if c.returncode is None]
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in seen or pid not in table:
                continue
            seen.add(pid)
            self.sessions.add(table[pid].sid)
            stack.extend(kids[pid])
        self.sessions &= {p.sid for p in table.values()}

    def members(self) -> list[Identity]:
        """Live (non-zombie) processes in the noted sessions, other than this one."""
        table = proc_table()
        self.sessions &= {p.sid for p in table.values()}
        return [
            (pid, p.start)
            for pid, p in table.items()
            if p.sid in self.sessions and p.state not in ("Z", "X") and pid != os.getpid()
        ]

    def stop_child(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """End the group of one child: SIGTERM, SIGKILL after ``timeout``; reap it."""
        if proc.poll() is None:  # unreaped leader: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # still unreaped after the timeout
            proc.wait(timeout=timeout)

    def stop(self, order: list[subprocess.Popen[bytes]], timeout: float) -> list[Identity]:
        """Stop the children in ``order``, then what is left in the noted sessions; return survivors."""
        self.record()
        for proc in order:
            self.record()  # a stopping SuperNode may still start a process: note its session first
            self.stop_child(proc, timeout)
        self.record()
        # SuperExecs, ServerApps, ClientApps outside the groups: each by PID, re-checked.
        for sig, grace in ((None, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for ident in self.members() if sig is not None else ():
                if sig is not None and alive(ident):  # re-checked by identity just before the signal
                    with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                        os.kill(ident[0], sig)
            deadline = time.monotonic() + grace
            while self.members() and time.monotonic() < deadline:
                time.sleep(0.2)
        return self.members()
