"""What secure aggregation costs a training round: SecAgg+ (``federation.secure_aggregation``) against plain
aggregation on the same scenario, seeds and rounds.

Runs ``fedadmp simulate`` (subprocess, Ray) twice on the default scenario (or ``--scenario``), with
evaluation only at each phase's end, and reads each run's ``metrics.csv``: mean wall time of a training
round (mask and fine-tune), bytes down and up per training round (every SecAgg+ stage counted: keys,
encrypted shares, masked vectors), and the deployed accuracy. Writes JSON.

    python benchmarks/secure_overhead.py [--scenario PATH] [--set key=value ...]
        [--out benchmarks/results/secure_overhead.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from common import ROOT, simulate


def run(scenario: str, sets: list[str], secure: bool, out: Path) -> dict[str, float]:
    """One simulation; its per-round time and bytes, and its deployed accuracy."""
    args = [*sets, "federation.eval_every=1000", f"federation.secure_aggregation.enabled={str(secure).lower()}"]
    run_dir = simulate(args, out, "secure" if secure else "plain", scenario)
    with (run_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] in ("mask", "finetune")]
    summary = json.loads((run_dir / "summary.json").read_text())

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / len(rows)

    return {
        "training_rounds": len(rows),
        "round_seconds": round(mean("round_seconds"), 3),
        "mb_down_per_round": round(mean("bytes_down") / 1e6, 3),
        "mb_up_per_round": round(mean("bytes_up") / 1e6, 3),
        "deployed_acc": summary["student"]["target_acc"],
    }


def main() -> None:
    """Plain, then secure; the ratios; JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", default="benchmarks/results/secure_overhead.json")
    args = parser.parse_args()
    results = {}
    for secure in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            results["secure" if secure else "plain"] = run(args.scenario, args.sets, secure, Path(tmp))
            print(json.dumps({"secure": secure} | results["secure" if secure else "plain"]))
    plain, secure_ = results["plain"], results["secure"]
    results["ratio"] = {
        key: round(secure_[key] / plain[key], 2) for key in ("round_seconds", "mb_down_per_round", "mb_up_per_round")
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"scenario": args.scenario or "default", "sets": args.sets} | results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
