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

Where the run saved them, the same figures are given under ``models`` for the teacher after its federated
self-training (``teacher_self_trained.pt``: ``adapted``, with the disagreement of every model with it)
and for each export candidate (``candidates/*.pt``), with ``reference_rule``: what
``server.guards.reference_guard`` says of the run's choice. ``--bn run`` pools every model's BN statistics
over the fleet's data where the run pooled its teacher's (``teacher_bn: fleet``) instead of each device's
own. The target accuracy of every model (the devices' test splits) is reported beside them, for
evaluation only. Configuration keys that this
version no longer knows are dropped and listed (the runs of earlier versions are the input this is
for). Writes JSON.

    python benchmarks/export_criteria.py RUN_DIR [RUN_DIR ...] [--bn device|run]
        [--out benchmarks/results/export_criteria.json]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from common import ROOT
from torch import nn

from admp.losses import information_maximisation
from admp.metrics import accuracy
from admp.objective import predictions
from admp.teacher import initial_model
from admp_config.base import ConfigError
from admp_config.schema import ScenarioConfig, load_config
from admp_data.tasks import build_task
from admp_export.bundle import adapt_bn, load_bundle
from server.guards import reference_guard


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


def im_score(p: torch.Tensor) -> float:
    """The export rule's IM score of pooled predictions ``p`` (lower is better); log-probabilities are
    logits of the same softmax."""
    return float(information_maximisation(p.clamp_min(1e-12).log()))


def run_models(run: Path, cfg: ScenarioConfig, classes: int, shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """The source ``teacher``, the ``adapted`` (self-trained) teacher where the run kept one, the
    ``shipped`` model and every saved export candidate (``candidate:NAME``)."""
    models: dict[str, nn.Module] = {}
    for name, file in (("teacher", "teacher.pt"), ("adapted", "teacher_self_trained.pt")):
        if (run / file).is_file():
            models[name] = initial_model(cfg, classes, shape)
            models[name].load_state_dict(torch.load(run / file, map_location="cpu", weights_only=True))
            models[name].eval()
    models["shipped"] = load_bundle(run / "pruned_model.pt")
    for bundle in sorted((run / "candidates").glob("*.pt")):
        models[f"candidate:{bundle.stem}"] = load_bundle(bundle)
    return models


def measure(run: Path, bn: str = "device") -> dict[str, Any]:
    """Every criterion of the module docstring for one finished run; under ``models``, each model's
    target accuracy, IM score and disagreement with the teacher and the adapted teacher, over every
    device's samples, each model with BN statistics of the device's own data (``bn="device"``) or as
    the run adapts its teacher (``bn="run"``: pooled over the fleet's data under ``teacher_bn: fleet``);
    and ``reference_rule``, what ``server.guards.reference_guard`` says of the run's choice."""
    summary = json.loads((run / "summary.json").read_text())
    cfg, dropped = run_config(run)
    task = build_task(cfg.data, cfg.run.seed)
    models = run_models(run, cfg, task.num_classes, task.input_shape)
    if bn == "run" and cfg.admp.teacher_bn == "fleet":
        fleet_x = torch.cat([task.device(i).train.x for i in range(task.num_devices)])
        models = {name: adapt_bn(model, fleet_x) for name, model in models.items()}
    val = task.source_val
    row: dict[str, Any] = {
        "run": run.name,
        "chosen": (summary.get("selection") or {}).get("chosen"),
        "dropped_keys": dropped,
        "teacher_source_val": accuracy(models["teacher"], val.x, val.y),
        "student_source_val": accuracy(adapt_bn(models["shipped"], task.source_train.x), val.x, val.y),
    }
    same_confident = confident = tested = 0
    correct = dict.fromkeys(models, 0.0)
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    for i in range(task.num_devices):
        device = task.device(i)
        pooled_bn = bn == "run" and cfg.admp.teacher_bn == "fleet"
        adapted = {name: model if pooled_bn else adapt_bn(model, device.train.x) for name, model in models.items()}
        for name, model in adapted.items():
            pooled[name].append(predictions(model, device.train.x))
            correct[name] += accuracy(model, device.test.x, device.test.y) * len(device.test.y) / 100
        tested += len(device.test.y)
        by_teacher, by_shipped = pooled["teacher"][-1], pooled["shipped"][-1]
        sure = by_teacher.max(1).values >= by_teacher.max(1).values.median()
        same_confident += int((by_teacher.argmax(1) == by_shipped.argmax(1))[sure].sum())
        confident += int(sure.sum())
    p = {name: torch.cat(parts) for name, parts in pooled.items()}
    figures = {
        name: {"target_acc": 100 * correct[name] / max(tested, 1), "im": im_score(p[name])}
        | {
            f"disagreement_{ref}": 100 * float((p[name].argmax(1) != p[ref].argmax(1)).float().mean())
            for ref in ("teacher", "adapted")
            if ref in p
        }
        for name in models
    }
    shipped, teacher = figures["shipped"], figures["teacher"]
    row["reference_rule"] = reference_rule(row["chosen"], figures)
    return row | {
        "agreement": 100 - shipped["disagreement_teacher"],
        "agreement_confident": 100 * same_confident / max(confident, 1),
        "teacher_im": teacher["im"],
        "student_im": shipped["im"],
        "teacher_target_acc": teacher["target_acc"],
        "student_target_acc": shipped["target_acc"],
        "models": figures,
    }


def reference_rule(chosen: str | None, figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The reference rule on the run's label-free choice: applies where the run kept a self-trained
    teacher, shipped a pruned candidate and saved it."""
    candidate = figures.get(f"candidate:{chosen}", {}).get("disagreement_adapted")
    source = figures["teacher"].get("disagreement_adapted")
    if candidate is None or source is None:
        return {"applies": False}
    return {"applies": True, "candidate": candidate, "source": source, "gives_way": reference_guard(candidate, source)}


def rounded(value: Any) -> Any:
    """``value`` with every float rounded to 3 places, for printing."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def main() -> None:
    """Measure each run; one line per run, then JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--bn", choices=("device", "run"), default="device", help="BN statistics (see measure)")
    parser.add_argument("--out", default="benchmarks/results/export_criteria.json")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs]
    missing = [str(r) for r in runs if not all((r / f).is_file() for f in ("summary.json", "teacher.pt"))]
    if missing:
        parser.error(f"not finished runs (summary.json and teacher.pt needed): {', '.join(missing)}")
    rows = []
    for run in runs:
        rows.append(measure(run, args.bn))
        print(json.dumps({k: rounded(v) for k, v in rows[-1].items() if k != "models"}), flush=True)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
