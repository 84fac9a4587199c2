"""The labelled-target reference of each pruned width: how well a student of naive's architecture does
on the target when it is given the target's labels. An oracle, for reading the pruning goals
only: no run, rule or setting uses it.

Per seed, the source teacher is trained exactly as a run trains it (same config, seed and stream; or
a run's own, with ``--set teacher.checkpoint=RUN_DIR/teacher.pt``). For
each ratio p (0: the dense model), the teacher is pruned to the cloud's L1 keep set at p (naive's start,
``admp.warmstart.cloud_keep``), then trained with the teacher's own recipe (``teacher.*``: epochs, rate,
augmentation, label smoothing) on every device's training samples *with their labels*, and scored on
every device's test samples, as a run scores its deployed model. Nothing is selected on the test
samples: the recipe's last epoch is kept.

It is a reference, not a bound: with the target's labels and the teacher's recipe, a student of
that width reaches this much. Where it lies below naive + 2, a label-free gain of 2 points over naive
(issue 22) would have to beat supervised training; distillation from a dense teacher can beat it on
very small students (HAPT at p = 0.9, a few hundred parameters), so read it with naive beside it.

    python benchmarks/pruned_ceiling.py SCENARIO [--set KEY=VALUE ...] [--seeds 0 1 2]
        [--ratios 0 0.6 0.8 0.9 0.95] [--name TASK] [--out benchmarks/results/pruned_ceiling.json]

Rows are appended to the JSON report as they finish; a rerun with the same ``--out`` skips them.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from common import ROOT

from admp.metrics import accuracy
from admp.models import example_input, groups_of
from admp.source import train_supervised
from admp.surgery import prune_model
from admp.teacher import prepare_teacher
from admp.warmstart import cloud_keep
from admp_config.base import ConfigError
from admp_config.schema import load_config
from admp_config.seeding import torch_generator
from admp_data.tasks import build_task


def ceilings(scenario: Path, sets: list[str], seed: int, ratios: list[float]) -> Iterator[dict[str, Any]]:
    """One row per ratio for one seed, each as soon as it is measured: the oracle student's target
    accuracy and its size."""
    cfg = load_config(scenario, [*sets, f"run.seed={seed}"])
    task = build_task(cfg.data, seed)
    teacher, info = prepare_teacher(cfg, task)
    devices = [task.device(i) for i in range(task.num_devices)]
    train, test = task.pooled(devices)
    groups, example = groups_of(teacher), example_input(teacher)
    teacher_acc = accuracy(teacher, test.x, test.y)
    for p in ratios:
        start = time.perf_counter()
        if p == 0:
            student = copy.deepcopy(teacher)
        else:
            student = prune_model(teacher, groups, cloud_keep(teacher, groups, p, example), example)
        # the labelled-target stream of its own: the oracle never shares batches with a run's streams
        gen = torch_generator(seed, "oracle-target", str(p))
        train_supervised(student, train.x, train.y, cfg.teacher, gen)
        row = {
            "seed": seed,
            "prune_ratio": p,
            "params": sum(t.numel() for t in student.parameters()),
            "oracle_target_acc": accuracy(student, test.x, test.y),
            "teacher_target_acc": teacher_acc,
            "teacher_source_val_acc": info["source_val_acc"],
            "train_samples": len(train),
            "test_samples": len(test),
            "epochs": cfg.teacher.epochs,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)
        yield row


def main() -> None:
    """Check the arguments, then run seed by seed, rewriting the report after each row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", type=Path, help="the task's scenario file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.6, 0.8, 0.9, 0.95])
    parser.add_argument(
        "--name", default="", help="the task's name in the report and its resume key (default: the scenario's stem)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruned_ceiling.json")
    args = parser.parse_args()
    bad = [p for p in args.ratios if not 0 <= p < 1]
    if bad:
        parser.error(f"--ratios must lie in [0, 1): {bad}")
    if not args.out.parent.is_dir():
        parser.error(f"--out: folder {args.out.parent} does not exist")
    try:
        load_config(args.scenario, args.set)  # one clear error before any training
    except ConfigError as exc:
        parser.error(str(exc))
    name = args.name or args.scenario.stem
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    done = {(r["task"], r["seed"], r["prune_ratio"]) for r in report["rows"]}
    torch.set_num_threads(2)
    for seed in args.seeds:
        todo = [p for p in args.ratios if (name, seed, p) not in done]
        if not todo:
            continue
        for row in ceilings(args.scenario, args.set, seed, todo):
            report["rows"].append({"task": name, "overrides": args.set, **row})
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # a run cut short keeps its rows


if __name__ == "__main__":
    main()
