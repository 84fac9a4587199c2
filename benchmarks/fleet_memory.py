"""Start-up, round time and peak memory of the whole process tree (driver, Ray's GCS/raylet and
workers) against fleet size.

Runs ``fedadmp simulate`` as a subprocess for 10 to 100,000 virtual devices with 10 per round (2 mask
rounds + 1 fine-tune round, evaluation on 10 devices), sampling every process in the tree every
0.25 s and summing PSS from /proc (shared pages counted once, proportionally). Start-up is the time
from launch to the first round (the teacher's training included, the same at every size); round
time is the mean wall time of the training rounds (their evaluation included). Writes JSON and a
PNG of the curves. Usage:

    python benchmarks/fleet_memory.py [--fleets 10 100 1000 10000 100000] [--set KEY=VALUE ...]
        [--out benchmarks/results/fleet_memory.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import run_directory, simulate_command


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(fleet: int, out_dir: Path, sets: list[str]) -> dict[str, Any]:
    """Run one simulation and return its peak tree PSS, process count and wall time."""
    own = [
        f"data.num_devices={fleet}",
        "data.samples_per_device=50",
        "federation.clients_per_round=10",
        "federation.eval_clients=10",
        "federation.mask_rounds=2",
        "federation.warmup_rounds=1",
        "federation.finetune_rounds=1",
        "teacher.epochs=3",
    ]
    cmd = simulate_command([*own, *sets], out_dir, f"fleet{fleet}")
    start, launched = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_kib, peak_procs = 0, 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        peak_kib = max(peak_kib, sum(pss_kib(p) for p in pids))
        peak_procs = max(peak_procs, len(pids))
        time.sleep(0.25)
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"fleet {fleet} failed:\n{output[-3000:]}")
    run_dir = run_directory(out_dir, f"fleet{fleet}")
    summary = json.loads((run_dir / "summary.json").read_text())
    with (run_dir / "metrics.csv").open() as f:
        rounds = [float(r["round_seconds"]) for r in csv.DictReader(f) if r["phase"] in ("mask", "finetune")]
    return {
        "virtual_devices": fleet,
        "simulation_nodes": summary["nodes"],
        "peak_pss_mib": round(peak_kib / 1024, 1),
        "peak_processes": peak_procs,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "startup_seconds": round(summary["first_round_at"] - launched, 1),
        "round_seconds": round(sum(rounds) / len(rounds), 2),
        "bytes_per_client_round": summary["bytes_per_client_round"],
        "bytes_per_client_round_without_teacher": summary["bytes_per_client_round_without_teacher"],
        "dense_student_bytes": summary["dense_student_bytes"],
        "student_target_acc": summary["student"]["target_acc"],
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Start-up, round time and peak PSS against the fleet size (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["virtual_devices"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["startup_seconds"] for r in results], "o-", label="start-up to first round")
    left.plot(sizes, [r["round_seconds"] for r in results], "s-", label="training round (mean)")
    left.set(xscale="log", xlabel="virtual devices", ylabel="seconds", ylim=(0, None))
    left.legend()
    gib = [r["peak_pss_mib"] / 1024 for r in results]
    right.plot(sizes, gib, "o-")
    right.set(
        xscale="log", xlabel="virtual devices", ylabel="peak PSS of the process tree (GiB)", ylim=(0, 1.2 * max(gib))
    )
    fig.suptitle("FedADMP simulation against fleet size (10 devices a round, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Measure every fleet size and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", type=int, nargs="+", default=[10, 100, 1000, 10000, 100000])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra scenario overrides")
    parser.add_argument("--out", default="benchmarks/results/fleet_memory.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fleet in args.fleets:
            row = measure(fleet, Path(tmp), args.set)
            results.append(row)
            print(json.dumps(row))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"clients_per_round": 10, "overrides": args.set, "results": results}, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
