"""Label-free export criteria, measured on finished runs: would they have told a shipped student that is
worse than its teacher from one that is better?

For each run directory (rebuilt from its ``config.yaml``, as the devices build their data), the source
teacher (``teacher.pt``) and the shipped model (``pruned_model.pt``) are compared by what a server could
know without a target label:

- ``*_source_val``: accuracy on the source validation split (labelled cloud data); the student with
  its BN statistics re-estimated on the source training split, so that its weights, not its target
  statistics, are measured;
- ``agreement``: the share of the devices' unlabeled samples on which student and teacher (both with
  BN re-estimated on the device's own data) predict the same class, and ``agreement_confident`` the
  same on the half of each device's samples where the teacher is most confident;
- ``*_im``: the information-maximisation score of each model on the pooled device data (the export
  rule's score, ``server.guards``; lower is better).

The target accuracy of both (per-device BN, the devices' test splits) is reported beside them, for
evaluation only. Configuration keys that this version no longer knows are dropped and listed (the
runs of earlier versions are the input this is for). Writes JSON.

    python benchmarks/export_criteria.py RUN_DIR [RUN_DIR ...] [--out benchmarks/results/export_criteria.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from common import ROOT
from torch import nn

from admp.losses import entropy
from admp.metrics import accuracy
from admp.teacher import initial_model
from admp.trainer import recalibrate_bn
from admp_config.base import ConfigError
from admp_config.schema import ScenarioConfig, load_config
from admp_data.tasks import build_task
from admp_export.bundle import load_bundle


def run_config(run: Path) -> tuple[ScenarioConfig, list[str]]:
    """The run's config, and the keys of it this version no longer knows (dropped, so old runs load)."""
    raw = yaml.safe_load((run / "config.yaml").read_text()) or {}
    dropped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        while True:
            path.write_text(yaml.safe_dump(raw))
            try:
                return load_config(path), dropped
            except ConfigError as exc:
                found = re.search(r"unknown key '([\w.]+)'", str(exc))
                if not found or found.group(1) in dropped:
                    raise
                *sections, key = found.group(1).split(".")
                node = raw
                for section in sections:
                    node = node[section]
                node.pop(key)
                dropped.append(found.group(1))


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax predictions, in batches."""
    return torch.cat([torch.softmax(model(x[i : i + 512]), dim=1) for i in range(0, len(x), 512)])


def im_score(p: torch.Tensor) -> float:
    """Mean prediction entropy minus the entropy of the mean prediction (lower is better)."""
    return float(entropy(p).mean() - entropy(p.mean(dim=0)))


def local(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with BN statistics re-estimated on ``x`` (the device step)."""
    probe = copy.deepcopy(model)
    recalibrate_bn(probe, x)
    return probe


def measure(run: Path) -> dict[str, Any]:
    """Every criterion of the module docstring for one finished run."""
    summary = json.loads((run / "summary.json").read_text())
    cfg, dropped = run_config(run)
    task = build_task(cfg.data, cfg.run.seed)
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    teacher.load_state_dict(torch.load(run / "teacher.pt", map_location="cpu", weights_only=True))
    student = load_bundle(run / "pruned_model.pt")
    val = task.source_val
    row: dict[str, Any] = {
        "run": run.name,
        "chosen": (summary.get("selection") or {}).get("chosen"),
        "dropped_keys": dropped,
        "teacher_source_val": accuracy(teacher.eval(), val.x, val.y),
        "student_source_val": accuracy(local(student, task.source_train.x), val.x, val.y),
    }
    same = same_confident = confident = samples = 0
    correct = {"teacher": 0.0, "student": 0.0}
    tested = 0
    pooled: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    for i in range(task.num_devices):
        device = task.device(i)
        models = {"teacher": local(teacher, device.train.x), "student": local(student, device.train.x)}
        p = {name: probabilities(model, device.train.x) for name, model in models.items()}
        agree = p["teacher"].argmax(1) == p["student"].argmax(1)
        sure = p["teacher"].max(1).values >= p["teacher"].max(1).values.median()
        same, samples = same + int(agree.sum()), samples + len(agree)
        same_confident, confident = same_confident + int(agree[sure].sum()), confident + int(sure.sum())
        for name, model in models.items():
            pooled[name].append(p[name])
            correct[name] += accuracy(model, device.test.x, device.test.y) * len(device.test.y) / 100
        tested += len(device.test.y)
    return row | {
        "agreement": 100 * same / max(samples, 1),
        "agreement_confident": 100 * same_confident / max(confident, 1),
        "teacher_im": im_score(torch.cat(pooled["teacher"])),
        "student_im": im_score(torch.cat(pooled["student"])),
        "teacher_target_acc": 100 * correct["teacher"] / max(tested, 1),
        "student_target_acc": 100 * correct["student"] / max(tested, 1),
    }


def main() -> None:
    """Measure each run; one line per run, then JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--out", default="benchmarks/results/export_criteria.json")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs]
    missing = [str(r) for r in runs if not all((r / f).is_file() for f in ("summary.json", "teacher.pt"))]
    if missing:
        parser.error(f"not finished runs (summary.json and teacher.pt needed): {', '.join(missing)}")
    rows = []
    for run in runs:
        rows.append(measure(run))
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
