"""Start a two-node Ray cluster on this host (a head and a worker, 1 CPU each, via Ray's own test
``Cluster``), run a tiny ``fedadmp simulate`` that joins it through ``federation.ray.address``, and
print what the cluster saw as JSON. Every Ray process it starts is ended by ``Cluster.shutdown``.

    python tests/ray_cluster_run.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="fedadmp-cluster-")  # never a cluster already there

import psutil
from ray.cluster_utils import Cluster  # after RAY_TMPDIR

TINY = [
    "data.num_devices=4",
    "data.samples_per_device=40",
    "teacher.epochs=2",
    "model.width=0.5",
    "federation.clients_per_round=2",
    "federation.mask_rounds=2",
    "federation.warmup_rounds=1",
    "federation.finetune_rounds=1",
    "federation.teacher_rounds=0",
    "federation.min_local_steps=0",
    "run.threads=1",
]


def listening() -> list[str]:
    """The addresses on which this process's descendants (the cluster's servers) listen."""
    me = psutil.Process()
    pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
    return sorted(
        {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids}
    )


def main(out_dir: str) -> None:
    """Head + worker on loopback, the run through the head's address, then the cluster's figures."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        args = [*TINY, f"federation.ray.address={cluster.address}", f"run.out_dir={out_dir}"]
        cmd = [sys.executable, "-m", "simulations.cli", "simulate"]
        for item in args:
            cmd += ["--set", item]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        actors = cluster.global_state.actor_table(None).values()  # every actor the cluster ran, dead ones too
        client_nodes = {a["Address"]["NodeID"] for a in actors if "ClientAppActor" in str(a.get("ActorClassName"))}
        figures = {
            "returncode": run.returncode,
            "live_nodes": len(cluster.global_state._live_node_ids()),
            "nodes_with_client_actors": len(client_nodes),
            "listening": listening(),
            "output": run.stdout[-3000:] + run.stderr[-3000:],
        }
        print(json.dumps(figures))
    finally:
        cluster.shutdown()
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
