"""``fedadmp transplant SCENARIO``: the mask-transplant ablation that says where FedADMP loses to naive.

Per seed, eight federated runs on the same splits, teacher and round budget:

- ``naive``: the cloud's L1 keep set, recovered on the source, then KD rounds (the baseline);
- ``fedadmp_ones``: FedADMP with m = Z = 1 at the start and the merged student as it is
  (``admp.keep_init none``, ``merge_recovery none``);
- ``ones_keep_naive_recipe``: ``fedadmp_ones``'s final keep set, trained with naive's recipe;
- ``l1_keep_fedadmp_schedule``: naive's L1 keep set, frozen, trained on FedADMP's schedule;
- ``fedadmp_l1``: FedADMP with m = Z started from the L1 keep set (``keep_init l1``);
- ``fedadmp_repaired``: ``fedadmp_ones`` with the merged student repaired on the source;
- ``fedadmp_fisher``: FedADMP with m = Z started from the fleet's gate-Fisher keep set (``keep_init
  fisher``, ``admp.importance``): the choice of channels made on target data;
- ``fisher_keep_naive_recipe``: ``fedadmp_fisher``'s final keep set, trained with naive's recipe.

If a keep set does well under the other's training, the choice of channels is not what loses; if
it does badly everywhere, it is. Each row also gives the accuracy of the student the KD phase
starts from (right after the merge; naive's cloud start), the rounds spent on the physically
pruned model, and the overlap of the keep set with naive's. Rows go to ``transplant.csv`` as
runs finish (a rerun skips them) and the table to ``transplant.md``. Target labels are read only to
report accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from admp.masks import MaskDict
from admp.warmstart import keep_overlap
from admp_config.schema import load_config

# name: (strategy, overrides); {ones}, {fisher}: the keep file of fedadmp_ones, fedadmp_fisher
ARMS: dict[str, tuple[str, list[str]]] = {
    "naive": ("naive", []),
    "fedadmp_ones": ("fedadmp", ["admp.keep_init=none", "admp.merge_recovery=none"]),
    "ones_keep_naive_recipe": ("naive", ["admp.keep_init=file", "admp.keep_path={ones}"]),
    "l1_keep_fedadmp_schedule": ("fedadmp", ["admp.keep_init=l1", "admp.z_frozen=true", "admp.merge_recovery=none"]),
    "fedadmp_l1": ("fedadmp", ["admp.keep_init=l1", "admp.merge_recovery=none"]),
    "fedadmp_repaired": ("fedadmp", ["admp.keep_init=none", "admp.merge_recovery=student"]),
    "fedadmp_fisher": ("fedadmp", ["admp.keep_init=fisher", "admp.merge_recovery=none"]),
    "fisher_keep_naive_recipe": ("naive", ["admp.keep_init=file", "admp.keep_path={fisher}"]),
}
COLUMNS = [
    "task",
    "arm",
    "prune_ratio",
    "seed",
    "start_acc",
    "final_acc",
    "pruned_rounds",
    "overlap_with_l1",
    "run_dir",
]


def _keep(run_dir: Path) -> MaskDict:
    bundle = torch.load(run_dir / "pruned_model.pt", map_location="cpu", weights_only=True)
    return dict(bundle["keep"])


def _row(task: str, arm: str, ratio: float, seed: int, run_dir: Path, l1: MaskDict | None) -> dict[str, Any]:
    """One finished run's figures from its directory."""
    rows = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    start = next((r["target_acc"] for r in rows if r["phase"] == "start"), None)
    keep = _keep(run_dir)
    return {
        "task": task,
        "arm": arm,
        "prune_ratio": ratio,
        "seed": seed,
        "start_acc": start,
        "final_acc": summary["student"]["target_acc"],  # as the device runs it (its BN step included)
        "pruned_rounds": sum(1 for r in rows if r["phase"] == "finetune"),
        "overlap_with_l1": keep_overlap(l1, keep) if l1 is not None else 1.0,
        "run_dir": str(run_dir),
    }


def run_transplant(scenario: str, task: str, ratio: float, seeds: list[int], out: Path, extra: list[str]) -> Path:
    """Run (or resume) every arm for every seed; returns the markdown table's path."""
    from simulations.federated import run_federated_simulation

    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "transplant.csv"
    done = list(csv.DictReader(csv_path.open())) if csv_path.is_file() else []
    for seed in seeds:
        dirs: dict[str, Path] = {
            r["arm"]: Path(r["run_dir"]) for r in done if r["task"] == task and int(r["seed"]) == seed
        }
        teacher: list[str] = []
        for arm, (strategy, arm_overrides) in ARMS.items():
            if arm in dirs:
                teacher = teacher or [f"teacher.checkpoint={dirs[arm] / 'teacher.pt'}"]
                continue
            name = f"{task}-{arm}-p{ratio:g}-s{seed}"
            ones, fisher = (dirs.get(a, Path()) / "pruned_model.pt" for a in ("fedadmp_ones", "fedadmp_fisher"))
            overrides = [o.replace("{ones}", str(ones)).replace("{fisher}", str(fisher)) for o in arm_overrides]
            run_keys = [f"run.seed={seed}", f"run.out_dir={out / 'runs'}", f"run.name={name}"]
            arm_keys = [f"federation.strategy={strategy}", f"admp.prune_ratio={ratio}", *overrides]
            cfg = load_config(scenario, overrides=[*extra, *arm_keys, *teacher, *run_keys])
            run_federated_simulation(cfg)
            dirs[arm] = sorted((out / "runs").glob(f"{name}-*"))[-1]
            teacher = teacher or [f"teacher.checkpoint={dirs[arm] / 'teacher.pt'}"]
            l1 = _keep(dirs["naive"]) if "naive" in dirs else None
            row = _row(task, arm, ratio, seed, dirs[arm], l1)
            _append(csv_path, row)
            done.append({k: str(v) for k, v in row.items()})
    return write_table(csv_path, out / "transplant.md")


def _append(csv_path: Path, row: dict[str, Any]) -> None:
    new = not csv_path.is_file()
    with csv_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    t = torch.tensor(values, dtype=torch.float64)
    spread = float(t.std()) if len(values) > 1 else 0.0
    return f"{float(t.mean()):.2f} ± {spread:.2f} (n={len(values)})"


def write_table(csv_path: Path, md_path: Path) -> Path:
    """Mean ± std over seeds of every (task, ratio, arm): start and final accuracy, pruned rounds, overlap."""
    rows = list(csv.DictReader(csv_path.open()))
    lines = [
        "| task | p | arm | accuracy at the KD phase's start % | final (deployed) % | rounds on the pruned model "
        "| keep-set overlap with L1 |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["task"], r["prune_ratio"], r["arm"]) for r in rows)
    for task, ratio, arm in keys:
        group = [r for r in rows if (r["task"], r["prune_ratio"], r["arm"]) == (task, ratio, arm)]
        starts = [float(r["start_acc"]) for r in group if r["start_acc"]]
        finals = [float(r["final_acc"]) for r in group if r["final_acc"]]
        overlap = sum(float(r["overlap_with_l1"]) for r in group) / len(group)
        lines.append(
            f"| {task} | {ratio} | {arm} | {_mean_std(starts)} | {_mean_std(finals)} | {group[0]['pruned_rounds']} "
            f"| {overlap:.2f} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return md_path
