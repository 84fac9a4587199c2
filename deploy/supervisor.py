"""The fleet's supervisor: starts the SuperLink, the devices' workers and the SuperNodes, registers the
keys, keeps the record of what it started (``state.json``) and stops exactly that (``deploy/procs.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (python deploy/fleet.py): make `deploy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy import procs
from deploy.spec import (
    ONLINE_TIMEOUT,
    ROOT,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    Layout,
    Spec,
    flower_env,
    flwr_json,
    healthy,
    node_config,
    shell_word,
    superlink_command,
    supernode_command,
    supernode_config,
    tail,
    worker_command,
    worker_socket,
    write_flwr_config,
    write_json,
)


class Stop(Exception):
    """The supervisor was asked to stop (SIGTERM, SIGINT or SIGHUP)."""


class Supervisor:
    """Starts, watches and stops the fleet's processes (run by ``fleet.py supervise``)."""

    def __init__(self, lay: Layout, spec: Spec) -> None:
        self.lay, self.spec = lay, spec
        self.tree = procs.Tree()
        self.link: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.state: dict[str, Any] = {"status": "starting", "supervisor": procs.identity(os.getpid())}
        self.commands: list[str] = []

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def check(self) -> None:
        """Raise ``Stop`` once a stop signal came."""
        if self.stopping:
            raise Stop

    def save(self, **changes: Any) -> None:
        """Update ``state.json``."""
        self.state |= changes
        write_json(self.lay.state, self.state)

    def device_threads(self) -> dict[str, str]:
        """``OMP_NUM_THREADS`` for each device's worker and SuperNode (whose per-message processes inherit
        it) with ``--device-threads``; nothing by default: torch's default threads, every core in each
        device, oversubscribe a host with several, but give the simulation's numbers to the sample."""
        threads = self.spec.device_threads
        return {"OMP_NUM_THREADS": str(threads)} if threads > 0 else {}

    def spawn(
        self, cmd: list[str], log: Path, home: Path, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session (its group is ours), in ``cwd`` (default: the log's folder),
        output to ``log``, with ``env`` over the Flower environment; own it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        self.commands.append(" ".join(shell_word(c) for c in cmd))
        (self.lay.root / "commands.sh").write_text("\n".join(["#!/bin/sh", *self.commands]) + "\n")
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                cmd,
                env=flower_env(home) | (env or {}),
                cwd=cwd or log.parent,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.tree.add(proc)
        return proc

    def start_link(self) -> str:
        """Start the SuperLink and wait until *our* process serves; return the address clients use."""
        spec, lay = self.spec, self.lay
        for attempt in range(1 if spec.port else 3):
            port = spec.port or procs.free_port(spec.connect_host)
            address = f"{spec.connect_host}:{port}"
            out = lay.link / f"superlink-{attempt}.out"
            self.link = self.spawn(superlink_command(spec, lay, port), out, lay.home)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline and self.link.poll() is None:
                self.check()
                # Ready only once *our* process holds the listener: never talk to someone else's.
                if procs.owns_listener(self.link.pid, port) and healthy(spec, lay, address):
                    self.save(superlink={"pid": self.link.pid, "port": port, "address": address, "log": str(out)})
                    return address
                time.sleep(0.3)
            self.tree.stop_child(self.link, STOP_TIMEOUT)
            if "address already in use" not in tail(out).lower():
                break
        raise RuntimeError(f"flower-superlink not ready within {STARTUP_TIMEOUT:.0f}s\n{tail(out)}")

    def register(self) -> dict[str, int]:
        """Register every SuperNode's public key (local and remote devices); {key name: node id}."""
        ids = {}
        for i in range(self.spec.devices + self.spec.remote):
            self.check()
            name = f"supernode-{i}"
            reply = flwr_json(
                self.lay, "supernode", "register", str(self.lay.keys / f"{name}.pub"), self.spec.federation
            )
            ids[name] = int(reply["node-id"])
        return ids

    def start_workers(self) -> None:
        """Start one worker per local device (``python -m clients.worker``, from the project root) with
        the device's node config; it imports the app, then listens on ``worker_socket``."""
        if not self.spec.workers:
            return
        for i in range(self.spec.devices):
            self.check()
            cmd = worker_command(self.lay, i, node_config(self.spec, self.lay, i))
            node = self.lay.node(i)
            self.workers.append(self.spawn(cmd, node / "worker.out", node / "flwr-home", ROOT, self.device_threads()))

    def start_nodes(self, address: str) -> None:
        """Start one SuperNode per local device, each with its own Runtime API port (and, with workers,
        ``worker-socket`` in its node config)."""
        spec, lay = self.spec, self.lay
        rows: list[dict[str, Any]] = []
        for i in range(spec.devices):
            port = procs.free_port()
            key = lay.keys / f"supernode-{i}" if spec.auth else None
            cmd = supernode_command(spec, lay, address, port, key, supernode_config(spec, lay, i))
            node = lay.node(i)
            self.nodes.append(self.spawn(cmd, node / "supernode.out", node / "flwr-home", env=self.device_threads()))
            rows.append({"device": i, "pid": self.nodes[-1].pid, "port": port})
            if self.workers:
                rows[-1] |= {"worker": self.workers[i].pid, "socket": str(worker_socket(lay, i))}
        self.save(supernodes=rows)

    def wait_workers(self) -> None:
        """Wait until each worker *we* started listens on its socket (it has imported the app); raise
        if one exits or is not ready within ``STARTUP_TIMEOUT``."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = set(range(len(self.workers)))
        while pending:
            self.check()
            for i in sorted(pending):
                worker = self.workers[i]
                if worker.poll() is not None:
                    raise RuntimeError(f"worker {i} exited ({worker.returncode})\n{self.worker_log(i)}")
                if procs.owns_unix_listener(worker.pid, worker_socket(self.lay, i)):
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(pending)} not ready within {STARTUP_TIMEOUT:.0f}s")
            time.sleep(0.3)

    def worker_log(self, i: int) -> str:
        """The ends of worker ``i``'s output and log."""
        return tail(self.lay.node(i) / "worker.out") + "\n" + tail(self.lay.node(i) / "worker.log")

    def wait_online(self) -> None:
        """Wait until the SuperLink lists every local SuperNode as online; raise if one exits."""
        deadline = time.monotonic() + ONLINE_TIMEOUT
        while True:
            self.check()
            for i, node in enumerate(self.nodes):
                if node.poll() is not None:
                    raise RuntimeError(
                        f"SuperNode {i} exited ({node.returncode})\n{tail(self.lay.node(i) / 'supernode.out')}"
                    )
            listed = flwr_json(self.lay, "supernode", "list", self.spec.federation)["nodes"]
            online = [n for n in listed if n.get("status") == "online"]
            if len(online) >= self.spec.devices:
                self.save(online=[n["node-id"] for n in online])
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(online)} of {self.spec.devices} SuperNodes online: {listed}")
            time.sleep(2.0)

    def serve(self) -> None:
        """Note the fleet's sessions every second until a stop signal or the SuperLink's exit."""
        assert self.link is not None
        while True:
            self.check()
            self.tree.record()
            members = sorted(self.tree.members())
            exited: dict[str, int | None] = {
                str(i): n.returncode for i, n in enumerate(self.nodes) if n.poll() is not None
            }
            exited |= {f"worker-{i}": w.returncode for i, w in enumerate(self.workers) if w.poll() is not None}
            if members != self.state.get("members") or exited != self.state.get("exited", {}):
                self.save(members=members, sessions=sorted(self.tree.sessions), exited=exited)
            if self.link.poll() is not None:
                raise RuntimeError(f"the SuperLink exited ({self.link.returncode})")
            time.sleep(1.0)

    def run(self) -> int:
        """Start the fleet, serve until stopped, stop exactly what was started; the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        rc = 0
        try:
            self.save()
            address = self.start_link()
            write_flwr_config(self.spec, self.lay, address)
            if self.spec.auth:
                self.save(registered=self.register())
            self.start_workers()  # their imports overlap the SuperNodes' start
            self.start_nodes(address)
            self.wait_workers()
            self.wait_online()
            self.save(status="ready")
            self.serve()
        except Stop:
            pass
        except Exception as exc:
            print(f"fleet failed: {exc}", flush=True)
            self.save(status="failed", error=str(exc))
            rc = 1
        finally:
            order = [*self.nodes, *self.workers, *([self.link] if self.link is not None else [])]
            survivors = self.tree.stop(order, STOP_TIMEOUT)
            self.save(status="failed" if rc else "stopped", members=survivors, survivors=survivors)
        return 1 if rc or survivors else 0
