"""What secure aggregation costs a training round: SecAgg+ (``federation.secure_aggregation``) against plain
aggregation on the same scenario, seeds and rounds.

Runs ``fedadmp simulate`` (subprocess, Ray) twice on the default scenario (or ``--scenario``), with
evaluation only at each phase's end, and reads each run's ``metrics.csv``: mean wall time of a training
round (mask and fine-tune), bytes down and up per training round (every SecAgg+ stage counted: keys,
encrypted shares, masked vectors), and the deployed accuracy. Writes JSON.

``--plain RUN_DIR`` takes a finished plain run as the baseline instead of running one: the secure run
then replays that run's own ``config.yaml`` with secure aggregation switched on and
``federation.robust.aggregation: auto`` (the mean SecAgg+'s sum needs, as in two runs of the default),
same seed, data, rounds and evaluation: one simulation saved, and the runs differ as the pair above does.

    python benchmarks/secure_overhead.py [--scenario PATH] [--set key=value ...] [--plain RUN_DIR]
        [--out benchmarks/results/secure_overhead.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import yaml
from common import ROOT, simulate


def run(scenario: str, sets: list[str], secure: bool, out: Path) -> dict[str, float]:
    """One simulation; its per-round time and bytes, and its deployed accuracy."""
    args = [*sets, "federation.eval_every=1000", f"federation.secure_aggregation.enabled={str(secure).lower()}"]
    return figures(simulate(args, out, "secure" if secure else "plain", scenario))


def plain_baseline(run_dir: Path) -> dict[str, float]:
    """A finished run's figures as the plain baseline; one clear error when it is not a finished plain run."""
    needed = [run_dir / name for name in ("config.yaml", "metrics.csv", "summary.json")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise SystemExit(f"--plain {run_dir}: not a finished run (missing {', '.join(missing)})")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        secure = bool(config["federation"]["secure_aggregation"]["enabled"])
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise SystemExit(f"--plain {run_dir}: config.yaml is not a run's resolved config ({exc!r})") from exc
    if secure:
        raise SystemExit(f"--plain {run_dir}: that run used secure aggregation; a plain run is the baseline")
    return figures(run_dir)


def figures(run_dir: Path) -> dict[str, float]:
    """A finished run's mean training-round time and bytes, and its deployed accuracy."""
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


def secure_replay(plain: Path, out: Path) -> dict[str, float]:
    """The plain run's own config with secure aggregation on and the aggregation it resolves ``auto`` to."""
    switch = ["federation.secure_aggregation.enabled=true", "federation.robust.aggregation=auto"]
    return figures(simulate(switch, out, "secure", str(plain / "config.yaml")))


def main() -> None:
    """Plain (run, or ``--plain``'s), then secure; the ratios; JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--plain", default="", help="a finished plain run to compare with instead of running one")
    parser.add_argument("--out", default="benchmarks/results/secure_overhead.json")
    args = parser.parse_args()
    if args.plain and (args.scenario or args.sets):
        parser.error("--plain replays that run's own config; --scenario and --set would make the two runs differ")
    with tempfile.TemporaryDirectory() as tmp:
        if args.plain:
            plain = Path(args.plain)
            results = {"plain": plain_baseline(plain), "secure": secure_replay(plain, Path(tmp))}
        else:
            results = {name: run(args.scenario, args.sets, name == "secure", Path(tmp)) for name in ("plain", "secure")}
    for name in ("plain", "secure"):
        print(json.dumps({"run": name} | results[name]))
    results["ratio"] = {
        key: round(results["secure"][key] / results["plain"][key], 2)
        for key in ("round_seconds", "mb_down_per_round", "mb_up_per_round")
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    scenario = f"{args.plain}/config.yaml" if args.plain else args.scenario or "default"
    out.write_text(json.dumps({"scenario": scenario, "sets": args.sets} | results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
