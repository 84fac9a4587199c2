"""A simulation's Ray cluster listens on loopback only (issue 11): the servers of the node it starts
(GCS, raylet, driver, workers, agents) are listed by their listening sockets. A run also joins an
existing two-node cluster through ``federation.ray.address`` (issue 13 item 6)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from admp_config.schema import config_from_overrides
from simulations import federated

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _listening(root: psutil.Process) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``root`` and its descendants."""
    pids = {root.pid} | {child.pid for child in root.children(recursive=True)}
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            out.append((psutil.Process(conn.pid).name(), conn.laddr.ip, conn.laddr.port))
    return sorted(set(out))


def test_the_simulation_s_ray_servers_listen_on_loopback_only(monkeypatch):
    for key in (
        "RAY_TMPDIR",
        "FEDADMP_CACHE_DIR",
        "FEDADMP_DEVICE_STATE_DIR",
        "RAY_DEDUP_LOGS",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    ):
        monkeypatch.setenv(key, "")  # restored after the test
    cfg = config_from_overrides(["federation.ray.num_cpus=1"])
    federated.ray_environment(cfg)
    import ray

    ray.init(**federated.backend_config(cfg)["init_args"])
    try:
        ray.get(ray.remote(lambda: 1).remote())  # a worker process too
        sockets = _listening(psutil.Process())
        names = {name for name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        assert all(address in LOOPBACK for _, address, _ in sockets), sockets
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        ray.shutdown()
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


@pytest.mark.deployment
def test_a_run_joins_an_existing_two_node_cluster_on_loopback(tmp_path):
    script = Path(__file__).resolve().parents[1] / "ray_cluster_run.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["returncode"] == 0, figures["output"]
    assert figures["live_nodes"] == 2 and set(figures["listening"]) <= LOOPBACK, figures["listening"]
    assert figures["nodes_with_client_actors"] == 2  # the head and the worker each ran a client actor
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert json.loads((run / "summary.json").read_text())["student"]["target_acc"] is not None
