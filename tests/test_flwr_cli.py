"""``flwr run .`` (Flower's own CLI) runs the same ServerApp/ClientApp on a SuperLink.

The test starts its own simulation SuperLink rather than letting ``flwr`` start the shared
``:local:`` one (detached, on fixed ports, never stopped, and silently reused when somebody
else's is already running). Flower 1.41's SuperLink serves the Runtime, Control and Fleet
APIs on one HTTP port (``--host``/``--port``); the legacy gRPC Control/Fleet servers start
only under ``FLWR_INTERNAL_GRPC_*=1`` (removed from its environment here), the Fleet API is
off in simulation mode anyway, and the gRPC health server only starts with
``--health-server-address`` (not given). So one free port on 127.0.0.1 is all it binds.

Clean-up: the SuperLink runs in a new session, so its process group is ours to end
(SIGTERM, then SIGKILL). Flower's SuperLink starts its SuperExec with
``start_new_session=True`` (outside that group), and the SuperExec starts the simulation and
Ray; those all inherit a per-test random token in their environment, and whatever still
carries the token after the group is gone is ended by PID. Nothing else is ever signalled.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN_VAR = "FEDADMP_TEST_SUPERLINK_TOKEN"
STARTUP_TIMEOUT = 90.0  # two shared cores: importing the SuperLink alone takes seconds
STOP_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(*paths: Path, chars: int = 3000) -> str:
    out = []
    for p in paths:
        text = p.read_text(errors="replace") if p.exists() else "(missing)"
        out.append(f"--- {p.name} ---\n{text[-chars:]}")
    return "\n".join(out)


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes LISTENing on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def _owns_listener(pid: int, port: int) -> bool:
    """True iff process ``pid`` holds the socket listening on 127.0.0.1:``port``."""
    inodes = _listening_inodes(port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _carries_token(pid: int, token: str) -> bool:
    """True iff ``pid`` is alive (not a zombie) and its environment holds our token."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, IndexError):
        return False
    return f"{TOKEN_VAR}={token}".encode() in env.split(b"\0")


def _token_pids(token: str) -> list[int]:
    """PIDs of live processes whose environment carries ``token`` (only ones we started)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()
            and _carries_token(int(d), token)]


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _start_superlink(tmp: Path, env: dict[str, str], token: str) -> tuple[subprocess.Popen, int, Path, Path]:
    """Start ``flower-superlink`` (simulation, insecure, 127.0.0.1:<free port>) and wait for it.

    Retries with a new port if the chosen one was taken between choosing and binding. Returns
    (process, port, log file, stdout/stderr file); raises with the log tails if it never
    becomes ready.
    """
    for attempt in range(3):
        port = _free_port()
        log, out = tmp / f"superlink-{attempt}.log", tmp / f"superlink-{attempt}.out"
        cmd = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", str(port), "--database", str(tmp / f"state-{attempt}.db"),
               "--log-file", str(log), "--disable-runtime-dependency-installation"]
        with out.open("wb") as fh:
            proc = subprocess.Popen(cmd, env=env | {TOKEN_VAR: token}, cwd=tmp, stdin=subprocess.DEVNULL,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                # Ready only when *our* process holds the listener: never talk to someone else's.
                if _healthy(port) and _owns_listener(proc.pid, port):
                    return proc, port, log, out
                time.sleep(0.3)
        except BaseException:  # e.g. KeyboardInterrupt: the caller never gets ``proc`` to stop
            _stop_superlink(proc, token)
            raise
        if proc.poll() is None:  # timed out while running: a real failure, not a port race
            _stop_superlink(proc, token)
            raise AssertionError(f"flower-superlink not ready on 127.0.0.1:{port} after {STARTUP_TIMEOUT:.0f}s\n"
                                 + _tail(log, out))
        _stop_superlink(proc, token)
        if "address already in use" not in _tail(log, out).lower():
            raise AssertionError(f"flower-superlink exited with code {proc.returncode} before it was ready\n"
                                 + _tail(log, out))
    raise AssertionError("flower-superlink: no free port after 3 attempts\n" + _tail(log, out))


def _stop_superlink(proc: subprocess.Popen, token: str) -> None:
    """End the process group we started, then any straggler that carries our token.

    ``proc`` was started with ``start_new_session=True``, so its group id is its PID. The
    group is signalled only while that id is provably still ours: before the leader is reaped
    (the PID, alive or zombie, cannot be reused), or while a process carrying our token is
    still a member of it.
    """
    pgid = proc.pid

    def signal_group(sig: int) -> None:
        if proc.returncode is None or any(_pgid_of(p) == pgid for p in _token_pids(token)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass

    signal_group(signal.SIGTERM)  # graceful: the SuperLink also stops the SuperExec it started
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)
    signal_group(signal.SIGKILL)  # group members that outlived the leader

    # SuperExec (own session, by Flower's design), simulation, Ray: they stop when their parent
    # goes; give them a moment, then signal each by PID, checking the token right before.
    for sig, grace in ((None, 5.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            for pid in _token_pids(token):
                if _carries_token(pid, token):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        deadline = time.monotonic() + grace
        while _token_pids(token) and time.monotonic() < deadline:
            time.sleep(0.2)


def test_flwr_run_simulation_on_own_superlink(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    out = tmp_path / "runs"
    token = uuid.uuid4().hex
    ray_tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's AF_UNIX socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")}
    env |= {"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
            "RAY_TMPDIR": ray_tmp,
            "PATH": str(BIN) + os.pathsep + os.environ["PATH"]}
    run_config = (f'overrides="data.num_devices=4; data.samples_per_device=40; teacher.epochs=2; '
                  f'federation.clients_per_round=2; federation.mask_rounds=1; federation.warmup_rounds=0; '
                  f'federation.finetune_rounds=1" out-dir="{out}"')
    proc = None
    try:
        proc, port, log, sl_out = _start_superlink(tmp_path, env, token)
        # An explicit address: `flwr` treats the SuperLink as user-managed and starts none itself.
        (home / "config.toml").write_text(f'[superlink]\ndefault = "mine"\n\n[superlink.mine]\n'
                                          f'address = "127.0.0.1:{port}"\ninsecure = true\n')
        cli = subprocess.run([str(BIN / "flwr"), "run", ".", "mine", "--run-config", run_config,
                              "--federation-config", "num-supernodes=4", "--stream"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:] + "\n" + _tail(log, sl_out)
        assert proc.poll() is None, "the SuperLink died during the run\n" + _tail(log, sl_out)
    finally:
        if proc is not None:
            _stop_superlink(proc, token)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not _token_pids(token), "processes started by this test survived its clean-up"
    assert not list(home.glob("local-superlink*")), "flwr started its own local SuperLink"

    (run,) = list(out.iterdir())
    # `flwr run --stream` exits 0 even when the ServerApp raised: show its log if the run is incomplete.
    assert (run / "summary.json").is_file(), "no summary.json; `flwr run` output:\n" + cli.stdout[-6000:] + cli.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "federated" and summary["devices"] == 4  # one device per simulated SuperNode
    assert summary["student"]["params"] < summary["teacher"]["params"]
    assert (run / "pruned_model.onnx").stat().st_size > 0
    rows = json.loads((run / "metrics.json").read_text())
    assert rows[-1]["phase"] == "final" and rows[-1]["target_acc"] is not None
