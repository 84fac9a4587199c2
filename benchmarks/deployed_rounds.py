"""Round time of the same scenario deployed (SuperLink + SuperNodes on loopback, the deployment kit) and
simulated (``fedadmp simulate``), and where a deployed round's time goes.

    python benchmarks/deployed_rounds.py [--devices 3] [--workers on|off|both] [--device-threads N]
        [--import-repeats N] [--set KEY=VALUE ...] [--out FILE.json]

Both runs use the default digits scenario cut to ``--devices`` devices (every device sampled each
round, short rounds) and write their per-round ``round_seconds``; the report gives the median
training round of each, their ratio, the accuracy of each, and the cost of what Flower 1.41 does
for every message of a deployed round: a new ``flwr-clientapp`` process that imports the app's
ClientApp component (``clients.entry``, thin, with the devices' workers; ``clients.app``, torch
and all, without them: both measured as the wall time of ``python -c "import ..."``). The fleet
runs with a worker per device (``--workers on``, the kit's default), without (``off``), or both
(``both``: ``deployed`` and ``deployed_no_workers``); each deployed result records whether workers
ran, how many messages they served and how many fell back to the per-message process.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, simulate

PY = sys.executable


def overrides(devices: int, extra: list[str]) -> list[str]:
    """A short run of the default scenario on ``devices`` devices, every device in every round (then the
    caller's ``--set`` items)."""
    return [
        f"data.num_devices={devices}",
        f"federation.clients_per_round={devices}",
        "federation.mask_rounds=3",
        "federation.warmup_rounds=1",
        "federation.finetune_rounds=2",
        "teacher.epochs=5",
        *extra,
    ]


def rounds(run: Path) -> tuple[list[float], float]:
    """(round_seconds of the training rounds, deployed accuracy) of a finished run directory."""
    rows = json.loads((run / "metrics.json").read_text())
    times = [float(r["round_seconds"]) for r in rows if r.get("round_seconds") and r["phase"] in ("mask", "finetune")]
    return times, float(json.loads((run / "summary.json").read_text())["student"]["target_acc"])


def simulated(settings: list[str], out: Path) -> Path:
    """The scenario through ``fedadmp simulate``; its run directory."""
    return simulate(settings, out, "simulated")


def deployed(
    devices: int, settings: list[str], work: Path, out: Path, workers: bool, threads: int = 0
) -> dict[str, Any]:
    """The scenario on a loopback fleet (insecure) brought up and down by the kit, with or without the
    devices' workers: its round times, accuracy, and who served the messages (the kit's logs)."""
    fleet = [PY, str(ROOT / "deploy" / "fleet.py")]
    up = [*fleet, "up", "--workdir", str(work), "--devices", str(devices)]
    up += ["--device-threads", str(threads)] + ([] if workers else ["--no-workers"])
    subprocess.run(up, check=True)
    try:
        spec = "; ".join(settings)
        subprocess.run([*fleet, "run", "--workdir", str(work), "--out-dir", str(out), "--overrides", spec], check=True)
    finally:
        subprocess.run([*fleet, "down", "--workdir", str(work)], check=False)
    times, acc = rounds(next(p for p in out.iterdir() if (p / "summary.json").is_file()))
    logs = [work / "nodes" / str(i) for i in range(devices)]
    served = sum(len(re.findall(r" (?:train|evaluate|query)\S*: ", read(d / "worker.log"))) for d in logs)
    fallbacks = sum(read(d / "supernode.out").count("unreachable") for d in logs)
    return {
        "workers": workers,
        "device_threads": threads,
        "worker_requests": served,
        "in_process_fallbacks": fallbacks,
        "round_seconds": times,
        "median": statistics.median(times),
        "accuracy": acc,
    }


def read(path: Path) -> str:
    """A log's text ('' if the file is absent)."""
    return path.read_text(errors="replace") if path.exists() else ""


def import_seconds(module: str, repeats: int = 3) -> float:
    """Median wall time of a fresh process importing ``module`` (what each deployed message pays)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([PY, "-c", f"import {module}"], cwd=ROOT, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Run both, write and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--workers", choices=("on", "off", "both"), default="on", help="the devices' workers")
    parser.add_argument("--device-threads", type=int, default=0, help="fleet.py up --device-threads (0: torch's)")
    parser.add_argument("--import-repeats", type=int, default=3, help="fresh processes timed per import")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra scenario overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deployed_rounds.json")
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.workers]
    settings = overrides(args.devices, args.set)
    with tempfile.TemporaryDirectory(prefix="fedadmp-bench-") as tmp:
        sim_times, sim_acc = rounds(simulated(settings, Path(tmp) / "sim"))
        runs = [
            deployed(args.devices, settings, Path(tmp) / f"fleet{k}", Path(tmp) / f"dep{k}", w, args.device_threads)
            for k, w in enumerate(modes)
        ]
    sim_median = statistics.median(sim_times)
    result: dict[str, object] = {
        "devices": args.devices,
        "overrides": settings,
        "simulated": {"round_seconds": sim_times, "median": sim_median, "accuracy": sim_acc},
        "deployed": runs[0],
        "ratio": float(runs[0]["median"]) / sim_median,
    }
    if len(runs) > 1:
        result |= {"deployed_no_workers": runs[1], "ratio_no_workers": float(runs[1]["median"]) / sim_median}
    result |= {
        "entry_import_seconds": import_seconds("clients.entry", args.import_repeats),
        "clientapp_import_seconds": import_seconds("clients.app", args.import_repeats),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
