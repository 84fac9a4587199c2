"""The deployment kit (deploy/) on loopback: a real SuperLink with TLS and SuperNode authentication,
two SuperNodes with their workers online, a SuperNode whose key was never registered refused, and
``down`` ending exactly what ``up`` started.

The app's own run through the kit (``fleet.py run``, every message served by a device's worker) is
the deployed half of ``benchmarks/deployed_rounds.py``, whose smoke test (tests/benchmarks/test_benchmarks.py)
checks it; one deployed run in the suite, not two.

Everything runs as separate processes, as a user would type it (``fedadmp fleet ...``).
The unregistered SuperNode is started by this test in a session of its own, with the very
command line the kit gives its own SuperNodes (same TLS flags, only another key), and is ended
by this test; nothing else is signalled here.
"""

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy import procs
from deploy import spec as kit
from deploy.certs import make_supernode_key

ROOT = Path(__file__).resolve().parents[2]
FLEET = [sys.executable, "-m", "simulations.cli", "fleet"]  # `fedadmp fleet`, the console script's code
UP_TIMEOUT = 400.0


def _fleet(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEET, *args], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def _https_ok(address: str, ctx: ssl.SSLContext | None) -> bool:
    scheme = "https" if ctx is not None else "http"
    try:
        with urllib.request.urlopen(f"{scheme}://{address}/health", timeout=5.0, context=ctx) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _check_tls(lay: kit.Layout, address: str) -> None:
    """The SuperLink speaks only HTTPS, with a certificate the kit's CA (and no public one) vouches for."""
    assert _https_ok(address, ssl.create_default_context(cafile=str(lay.certs / "ca.crt")))
    assert not _https_ok(address, None), "the SuperLink answered plain HTTP"
    assert not _https_ok(address, ssl.create_default_context()), "the certificate is trusted without the kit's CA"


def _start_rogue(tmp: Path, lay: kit.Layout, address: str) -> tuple[subprocess.Popen[bytes], procs.Tree, Path]:
    """A SuperNode with a fresh, unregistered key and otherwise the kit's own command line."""
    key, _ = make_supernode_key(tmp / "rogue", "rogue")
    spec = kit.Spec(**json.loads((lay.root / "spec.json").read_text()))
    config = f'device-id=7 cache-dir="{tmp / "rogue" / "cache"}"'
    cmd = kit.supernode_command(spec, lay, address, procs.free_port(), key, config)
    log = tmp / "rogue" / "supernode.out"
    (tmp / "rogue" / "home").mkdir()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            env=kit.flower_env(tmp / "rogue" / "home"),
            cwd=tmp / "rogue",
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    tree = procs.Tree()
    tree.add(proc)
    return proc, tree, log


def _wait(proc: subprocess.Popen[bytes], tree: procs.Tree, timeout: float) -> None:
    """Wait for ``proc``, noting its sessions every second (for the clean-up)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        tree.record()
        time.sleep(1.0)


@pytest.mark.deployment
def test_fleet_with_tls_and_supernode_auth(tmp_path: Path) -> None:
    """up (TLS + node auth, 2 SuperNodes and their workers), a rogue SuperNode refused, down."""
    lay = kit.Layout(tmp_path / "fleet")
    rogue, rogue_tree, rogue_survivors, state = None, procs.Tree(), [], {}
    try:
        up = _fleet("up", "--workdir", str(lay.root), "--devices", "2", "--tls", "--auth", timeout=UP_TIMEOUT)
        assert up.returncode == 0, up.stdout + up.stderr + kit.tail(lay.root / "supervisor.log")
        state = json.loads(lay.state.read_text())
        address = state["superlink"]["address"]
        _check_tls(lay, address)
        rogue, rogue_tree, rogue_log = _start_rogue(tmp_path, lay, address)
        _wait(rogue, rogue_tree, 120.0)
        rogue_text = rogue_log.read_text(errors="replace")
        assert rogue.returncode not in (None, 0), "the unregistered SuperNode was not refused\n" + rogue_text
        assert "Failed to activate SuperNode" in rogue_text, rogue_text
        link_log = (lay.link / "superlink.log").read_text(errors="replace")
        assert "No SuperNode found with the given public key" in link_log, link_log[-3000:]  # refused for its key
        # The control API over TLS lists the two registered SuperNodes online, and not the rogue.
        listed = kit.flwr_json(lay, "supernode", "list", "fleet")["nodes"]
        assert sorted(n["node-id"] for n in listed) == sorted(str(i) for i in state["registered"].values())
        assert [n["status"] for n in listed] == ["online", "online"]
        assert all(row.get("worker") for row in state["supernodes"]), state["supernodes"]
        state = json.loads(lay.state.read_text())  # every member the supervisor recorded, for the check after down
    finally:
        if rogue is not None:
            rogue_survivors = rogue_tree.stop([rogue], 10.0)
        down = _fleet("down", "--workdir", str(lay.root), timeout=180)
    assert not rogue_survivors, f"the rogue SuperNode's processes survived: {rogue_survivors}"
    assert down.returncode == 0, down.stdout + down.stderr
    recorded = [tuple(m) for m in state.get("members", [])] + [tuple(state["supervisor"])]
    assert not [m for m in recorded if procs.alive(m)], "processes of the fleet survived `down`"
    for i in (0, 1):
        assert not (lay.node(i) / "worker.sock").exists(), "a worker's socket outlived `down`"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
