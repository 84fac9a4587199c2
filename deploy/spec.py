"""The deployment kit's plan: what a fleet is (``Spec``), where its files live (``Layout``), and the
Flower 1.41 command lines and configuration that start it (used by ``deploy/fleet.py``)."""

from __future__ import annotations

import json
import os
import shlex
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (python deploy/fleet.py): make `deploy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


ROOT = Path(__file__).resolve().parents[1]


def app_dir(workdir: Path) -> Path:
    """The folder ``flwr run .`` builds the app bundle from: the source tree, whose pyproject.toml
    declares the app; or, for an installed wheel (no source tree), ``<workdir>/app`` with
    ``flower_app.toml`` as its pyproject.toml."""
    source = ROOT / "pyproject.toml"
    if source.is_file() and "[tool.flwr.app]" in source.read_text(encoding="utf-8"):
        return ROOT
    app = workdir / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(Path(__file__).with_name("flower_app.toml").read_text(encoding="utf-8"))
    return app


BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 90.0  # two shared cores: importing the SuperLink alone takes seconds
ONLINE_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0
SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path, 108 with its NUL) on Linux
WILDCARDS = ("0.0.0.0", "::", "127.0.0.1", "localhost")


@dataclass
class Spec:
    """What ``up`` was asked for (kept in ``spec.json``)."""

    devices: int = 2
    tls: bool = False
    auth: bool = False
    host: str = "127.0.0.1"  # where the SuperLink listens
    port: int = 0  # 0: a free port
    sans: list[str] = field(default_factory=list)  # more names/IPs for the server certificate
    remote: int = 0  # SuperNode keys registered for devices started elsewhere
    data_path: str = ""  # per device; "{i}" is replaced by the device id
    test_path: str = ""
    cache_root: str = ""  # default: <workdir>/nodes/<i>/cache
    federation: str = "fleet"  # the SuperLink connection's name in config.toml
    workers: bool = True  # a long-lived clients.worker beside each local SuperNode (its worker-socket)
    device_threads: int = 0  # torch threads of each local device (OMP_NUM_THREADS of its worker and SuperNode);
    #   0: torch's default, whose numbers match the simulation's to the sample

    @property
    def connect_host(self) -> str:
        """The address local clients (the CLI, local SuperNodes) use to reach the SuperLink."""
        return "127.0.0.1" if self.host in WILDCARDS else self.host


@dataclass(frozen=True)
class Layout:
    """The files of a fleet in its work directory."""

    root: Path

    @property
    def certs(self) -> Path:
        """CA and server certificate."""
        return self.root / "certs"

    @property
    def keys(self) -> Path:
        """SuperNode key pairs ``supernode-<i>``/``supernode-<i>.pub``."""
        return self.root / "keys"

    @property
    def home(self) -> Path:
        """``FLWR_HOME`` of the CLI and the SuperLink (``config.toml``)."""
        return self.root / "flwr-home"

    @property
    def link(self) -> Path:
        """The SuperLink's database and logs."""
        return self.root / "superlink"

    @property
    def state(self) -> Path:
        """``state.json``: the supervisor, ports, node ids, the processes in the fleet's sessions."""
        return self.root / "state.json"

    def node(self, i: int) -> Path:
        """SuperNode ``i``'s folder (its ``FLWR_HOME``, log, default cache)."""
        return self.root / "nodes" / str(i)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or {} if there is none (yet)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (readers never see half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def quoted(value: str) -> str:
    """A TOML string for Flower's ``key=value`` lists (which cut a value at its first ``"``)."""
    if '"' in value:
        raise ValueError(f'a value in a Flower config string cannot contain ": {value}')
    return json.dumps(value)


def flower_env(home: Path) -> dict[str, str]:
    """Environment of every Flower process: this venv first on PATH, ``FLWR_HOME``, no update check."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_GRPC_")}
    env |= {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
        # Flower's SuperExec looks for a new task (a message to run, the ServerApp) every 1 s by default;
        # 0.1 s takes up to 0.9 s off every message at the cost of ten cheap local calls a second
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": os.environ.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"),
    }
    return env


def tls_args(spec: Spec, lay: Layout) -> list[str]:
    """Client-side TLS flags of ``flower-supernode``: the kit's CA, or ``--insecure``."""
    return ["--root-certificates", str(lay.certs / "ca.crt")] if spec.tls else ["--insecure"]


def superlink_command(spec: Spec, lay: Layout, port: int) -> list[str]:
    """``flower-superlink`` serving Fleet, Control and Runtime APIs on ``spec.host:port``."""
    cmd = [str(BIN / "flower-superlink"), "--host", spec.host, "--port", str(port)]
    cmd += ["--database", str(lay.link / "state.db"), "--log-file", str(lay.link / "superlink.log")]
    cmd += ["--disable-runtime-dependency-installation"]
    if spec.tls:
        c = lay.certs
        cmd += ["--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.crt")]
        cmd += ["--ssl-keyfile", str(c / "server.key")]
    else:
        cmd.append("--insecure")
    if spec.auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def node_config(spec: Spec, lay: Layout, i: int) -> str:
    """Device ``i``'s ``--node-config``: ``device-id``, ``cache-dir`` and the data paths if given."""
    cache = Path(spec.cache_root) / f"device-{i}" if spec.cache_root else lay.node(i) / "cache"
    items = [f"device-id={i}", f"cache-dir={quoted(str(cache))}"]
    for key, pattern in (("data-path", spec.data_path), ("test-path", spec.test_path)):
        if pattern:
            items.append(f"{key}={quoted(pattern.format(i=i))}")
    return " ".join(items)


def worker_socket(lay: Layout, i: int) -> Path:
    """Device ``i``'s worker socket, in its node folder (inside the 0700 work directory)."""
    return lay.node(i) / "worker.sock"


def socket_path_fits(path: Path) -> bool:
    """True iff ``path`` fits a Unix socket address (107 bytes on Linux)."""
    return len(os.fsencode(path)) <= SOCKET_PATH_MAX


def worker_command(lay: Layout, i: int, config: str) -> list[str]:
    """``python -m clients.worker`` for device ``i``: the device's own node config (the SuperNode's
    keys but ``worker-socket``), listening on ``worker_socket``, logging to ``worker.log``."""
    cmd = [sys.executable, "-m", "clients.worker", "--socket", str(worker_socket(lay, i))]
    return [*cmd, "--node-config", config, "--log", str(lay.node(i) / "worker.log")]


def supernode_config(spec: Spec, lay: Layout, i: int) -> str:
    """The SuperNode's ``--node-config``: the device's, plus ``worker-socket`` when it has a worker
    (the thin ClientApp, ``clients.entry``, then forwards each message to it)."""
    config = node_config(spec, lay, i)
    return f"{config} worker-socket={quoted(str(worker_socket(lay, i)))}" if spec.workers else config


def supernode_command(spec: Spec, lay: Layout, address: str, port: int, key: Path | None, config: str) -> list[str]:
    """``flower-supernode`` connecting to ``address`` (its own Runtime API on 127.0.0.1:``port``)."""
    cmd = [str(BIN / "flower-supernode"), "--superlink", address, *tls_args(spec, lay)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--node-config", config]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return cmd


def write_flwr_config(spec: Spec, lay: Layout, address: str) -> None:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection, the default, named ``spec.federation``."""
    lines = ["[superlink]", f"default = {quoted(spec.federation)}", "", f"[superlink.{spec.federation}]"]
    lines.append(f"address = {quoted(address)}")
    if spec.tls:
        lines.append(f"root-certificates = {quoted(str(lay.certs / 'ca.crt'))}")
    else:
        lines.append("insecure = true")
    lay.home.mkdir(parents=True, exist_ok=True)
    (lay.home / "config.toml").write_text("\n".join(lines) + "\n")


def flwr_json(lay: Layout, *args: str) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` with the fleet's configuration; its JSON answer, or raise."""
    cmd = [str(BIN / "flwr"), *args, "--format", "json"]
    r = subprocess.run(cmd, env=flower_env(lay.home), cwd=lay.root, capture_output=True, text=True, timeout=120)
    try:
        data = json.loads(r.stdout[r.stdout.find("{") :])
    except ValueError:
        data = None
    if r.returncode != 0 or not isinstance(data, dict) or not data.get("success"):
        raise RuntimeError(f"`flwr {' '.join(args)}` failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return data


def healthy(spec: Spec, lay: Layout, address: str) -> bool:
    """True iff the SuperLink at ``address`` answers ``/health`` (over HTTPS, verified, with ``--tls``)."""
    scheme = "https" if spec.tls else "http"
    ctx = ssl.create_default_context(cafile=str(lay.certs / "ca.crt")) if spec.tls else None
    try:
        with urllib.request.urlopen(f"{scheme}://{address}/health", timeout=2.0, context=ctx) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, headed by its name."""
    text = path.read_text(errors="replace") if path.exists() else "(missing)"
    return f"--- {path} ---\n{text[-chars:]}"


def shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell where needed (the lines of ``commands.sh``)."""
    return shlex.quote(word)
