"""Run a federated scenario on Flower's Simulation Engine with the Ray backend."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from admp_config.schema import ScenarioConfig
from admp_data.tasks import build_task
from server.setup import check_resumable


def backend_config(cfg: ScenarioConfig) -> dict[str, dict[str, Any]]:
    """Ray backend settings: per-client resources, CPU count, loopback-only node address."""
    init_args: dict[str, bool | int | str] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": True,
    }
    if cfg.federation.ray.address:
        init_args["address"] = cfg.federation.ray.address
    else:
        init_args["_node_ip_address"] = "127.0.0.1"
        if cfg.federation.ray.num_cpus:
            init_args["num_cpus"] = cfg.federation.ray.num_cpus
    return {"client_resources": {"num_cpus": cfg.federation.ray.client_cpus, "num_gpus": 0.0}, "init_args": init_args}


def _on_loopback(address: str) -> bool:
    """Whether a Ray address (``host:port``) is on this host's loopback."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def ray_environment(cfg: ScenarioConfig) -> None:
    """The environment a local Ray cluster starts in: a fresh temp dir per run (``RAY_TMPDIR``, so it
    never joins a stale local cluster) and, unless ``federation.ray.address`` joins a real cluster,
    loopback only. Ray 2.55 turns a requested node address of 127.0.0.1 into the host's address
    and binds its servers (GCS, raylet, workers) to every interface, unless multi-node clusters are
    off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by ``ray._private.services.get_node_ip_address``):
    then the node address is 127.0.0.1 and every server listens on loopback only. The same holds for a
    driver joining a cluster at a loopback ``ray_address`` (a head started with ``--node-ip-address
    127.0.0.1``): otherwise Ray rewrites 127.0.0.1 into the host's address, where nothing listens."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="fedadmp-ray-")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # the virtual devices' teacher cache: one content-addressed store beside the runs (kept for --resume)
    os.environ["FEDADMP_CACHE_DIR"] = str(Path(cfg.run.out_dir).resolve() / ".device_cache")
    if cfg.federation.ray.address and not _on_loopback(cfg.federation.ray.address):
        return  # a real cluster: its nodes' addresses are what they are
    # our own local cluster, or one on this host's loopback (joined as 127.0.0.1, not as the host's address)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray already imported in this process: its constant was read at import
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]


def run_federated_simulation(
    cfg: ScenarioConfig, resume: str | None = None, verbose: bool = False
) -> dict[str, Any] | None:
    """Start the Simulation Engine and run the ServerApp: the fleet's virtual devices run on a pool of
    SuperNodes (``federation.simulation_nodes``: as many as one exchange asks), not one node each.

    Ray gets a fresh temp dir per run and binds to loopback only (``ray_environment``); with
    ``federation.ray.address`` it joins that cluster instead. Settings and the checkpoint to resume
    from are checked before Ray starts.
    """
    task = build_task(cfg.data, cfg.run.seed)
    cfg.federation.check_fleet(task.num_devices)  # before Ray starts: one clear error, nothing written
    if resume:
        check_resumable(cfg, resume, task)
    ray_environment(cfg)  # before Ray is imported (Flower imports it)
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import make_server_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
    # what each virtual device keeps between its rounds (per-client duals): one file per device, per run
    finished: list[Path] = []  # the run directory, once the ServerApp (in this process) has finished
    os.environ["FEDADMP_DEVICE_STATE_DIR"] = state_dir = tempfile.mkdtemp(prefix="fedadmp-devices-")
    try:
        run_simulation(
            server_app=make_server_app(cfg, resume, virtual=True, finished=finished.append),
            client_app=client_app,
            num_supernodes=cfg.federation.simulation_nodes(task.num_devices),
            backend_config=backend_config(cfg),
        )
    finally:  # the virtual devices' own state and Ray's temp dir (logs, sockets) live as long as the run
        os.environ.pop("FEDADMP_DEVICE_STATE_DIR", None)
        for folder in (state_dir, os.environ.get("RAY_TMPDIR", "")):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
    if not finished:
        return None
    summary: dict[str, Any] = json.loads((finished[0] / "summary.json").read_text())
    return summary
