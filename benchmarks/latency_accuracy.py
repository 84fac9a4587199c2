"""Latency-aware ratios against the uniform ratio at the same measured latency, run by run.

Every finished run of a study folder that planned its ratios (its folder has ``latency_plan.json``, e.g.
the ``fedadmp_lat`` and ``naive_lat`` runs of ``studies/latency.yaml``) recorded the uniform ratio that
met the same budget, measured first by its own search. Its pair is the study's run without a plan of the
same task, method and seed at that ratio (there, ``fedadmp_uniform`` and ``naive_uniform``); the dense
reference is the study's fed. KD run of the task and seed. Both architectures are measured again here,
interleaved (``--rounds`` passes, the median of each model's medians), in ONNX Runtime on one thread
through the device runtime's session (``admp_export.latency.measured_ms``: batch 1 over ``--repeats``
calls, batch 64 over a fiftieth): the run's architecture (seeded weights) pruned to the plan's and to
the uniform model's channel counts (the weights do not change the time), and the planned run's shipped
``pruned_model.onnx``. Accuracies are the runs' summaries: what the devices get from the exported model,
after the shipped device-side BN step where the run has one (``benchmarks/deployed_accuracy.py`` checks a
run's figure on its devices). Writes ``latency_accuracy.json`` and ``latency_accuracy.md`` into the
study folder.

    python benchmarks/latency_accuracy.py results/latency [--repeats 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from admp.admm import keep_count
from admp.masks import group_sizes
from admp.metrics import count_params
from admp.models import example_input, groups_of
from admp.surgery import prune_model
from admp.teacher import initial_model
from admp_config.schema import load_config
from admp_data.tasks import build_task
from admp_export.latency import keep_first, measured_ms, onnx_latency
from simulations.study_report import mean_std, spread

GOAL_LOSS, GOAL_GAIN = 2.0, 1.0  # where the uniform model loses >= 2 points to dense, the plan gains >= 1


def read_rows(folder: Path) -> list[dict[str, str]]:
    """The finished runs of a study folder (its runs.csv)."""
    with (folder / "runs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def planned(row: dict[str, str]) -> bool:
    """Whether a run planned its ratios (its folder holds ``latency_plan.json``)."""
    return bool(row["run_dir"]) and (Path(row["run_dir"]) / "latency_plan.json").is_file()


def pair_of(run: dict[str, str], ratio: float, rows: list[dict[str, str]]) -> dict[str, str]:
    """The study's run without a plan of the planned run's task, method and seed at ``ratio``."""
    for row in rows:
        same = (row["task"], row["method"], row["seed"]) == (run["task"], run["method"], run["seed"])
        if same and not planned(row) and abs(float(row["prune_ratio"]) - ratio) < 1e-9:
            return row
    raise SystemExit(f"{run['run_id']}: no run without a plan at p = {ratio:g} for its task, method and seed")


def dense_model(run_dir: Path, tasks: dict[str, tuple[int, tuple[int, ...]]]) -> torch.nn.Module:
    """The run's dense architecture with its seeded initial weights (the weights do not change the time);
    ``tasks`` caches each task's classes and sample shape, so its data is read once."""
    cfg = load_config(run_dir / "config.yaml")
    key = cfg.data.model_dump_json()
    if key not in tasks:
        task = build_task(cfg.data, cfg.run.seed)
        tasks[key] = task.num_classes, tuple(task.input_shape)
    return initial_model(cfg, *tasks[key]).eval()


def timed_pair(
    dense: torch.nn.Module, run_dir: Path, plan: dict[str, Any], repeats: int, rounds: int
) -> dict[str, Any]:
    """The plan's and the uniform model's measured ms (batch 1, 64) and parameters, and the artefact's ms."""
    groups, example = groups_of(dense), example_input(dense)
    sizes = group_sizes(dense, groups)
    counts = {
        "plan": dict(plan["counts"]),
        "uniform": {g: keep_count(c, float(plan["uniform_ratio"])) for g, c in sizes.items()},
    }
    models = {k: prune_model(dense, groups, keep_first(sizes, c), example).eval() for k, c in counts.items()}
    passes: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for k, model in models.items():
                passes[k].append(measured_ms(model, Path(tmp), repeats))
    shape = tuple(int(d) for d in example.shape[1:])
    artefact = onnx_latency(run_dir / "pruned_model.onnx", shape, repeats)
    out: dict[str, Any] = {"artefact_ms": artefact}
    for k, model in models.items():
        out[k] = {
            "channels": counts[k],
            "params": count_params(model),
            "ms": {f"batch_{b}": statistics.median(t[i] for t in passes[k]) for i, b in enumerate((1, 64))},
        }
    return out


def measure(study: Path, repeats: int, rounds: int) -> list[dict[str, Any]]:
    """One record per planned run: its plan, its pair's and the dense run's accuracies, both latencies."""
    rows = read_rows(study)
    dense = {(r["task"], r["seed"]): float(r["student_acc"]) for r in rows if r["method"] == "fedkd"}
    records: list[dict[str, Any]] = []
    tasks: dict[str, tuple[int, tuple[int, ...]]] = {}
    for row in rows:
        if not planned(row):
            continue
        run_dir = Path(row["run_dir"])
        plan = json.loads((run_dir / "latency_plan.json").read_text())
        if plan.get("uniform_ratio") is None:
            raise SystemExit(f"{row['run_id']}: no uniform ratio met its budget; there is no pair at equal latency")
        pair = pair_of(row, float(plan["uniform_ratio"]), rows)
        print(f"{row['run_id']}: against {pair['run_id']}", flush=True)
        records.append(
            {
                "run_id": row["run_id"],
                "task": row["task"],
                "method": row["method"],
                "seed": int(row["seed"]),
                "budget_ms": plan["budget_ms"],
                "uniform_ratio": float(plan["uniform_ratio"]),
                "planned_acc": float(row["student_acc"]),
                "planned_acc_as_exported": float(row["student_acc_as_exported"]),
                "uniform_acc": float(pair["student_acc"]),
                "uniform_run": pair["run_id"],
                "dense_acc": dense.get((row["task"], row["seed"])),
                **timed_pair(dense_model(run_dir, tasks), run_dir, plan, repeats, rounds),
            }
        )
    return records


def table(records: list[dict[str, Any]]) -> list[str]:
    """Per task and method: the pair's channels, parameters, measured ms and accuracies, and the goal."""
    lines = [
        "| task | method | uniform p | channels plan / uniform | params plan / uniform | ms b1 plan / uniform "
        "| ms b64 plan / uniform | plan acc % | uniform acc % | plan − uniform | uniform − dense | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted({(r["task"], r["method"]) for r in records}):
        sel = [r for r in records if (r["task"], r["method"]) == key]
        gain = [r["planned_acc"] - r["uniform_acc"] for r in sel]
        loss = [r["uniform_acc"] - r["dense_acc"] for r in sel if r["dense_acc"] is not None]
        mean_loss, (mean_gain, sd_gain) = statistics.fmean(loss), mean_std(gain)
        goal = "applies: " + ("met" if mean_gain >= GOAL_GAIN else "not met") if mean_loss <= -GOAL_LOSS else "n/a"
        ratios = ", ".join(sorted({f"{r['uniform_ratio']:g}" for r in sel}))
        ms = {
            k: {b: statistics.fmean(r[k]["ms"][b] for r in sel) for b in ("batch_1", "batch_64")}
            for k in ("plan", "uniform")
        }
        lines.append(
            f"| {key[0]} | {key[1]} | {ratios} "
            f"| {' / '.join(str(list(sel[0][k]['channels'].values())) for k in ('plan', 'uniform'))} "
            f"| {statistics.fmean(r['plan']['params'] for r in sel):,.0f} / {sel[0]['uniform']['params']:,} "
            f"| {ms['plan']['batch_1'] * 1e3:.1f} / {ms['uniform']['batch_1'] * 1e3:.1f} µs "
            f"| {ms['plan']['batch_64']:.3f} / {ms['uniform']['batch_64']:.3f} "
            f"| {spread([r['planned_acc'] for r in sel])} | {spread([r['uniform_acc'] for r in sel])} "
            f"| {mean_gain:+.2f} ± {sd_gain:.2f} | {mean_loss:+.2f} | {goal} |"
        )
    return lines


def main() -> None:
    """Measure every planned run of a study against its uniform pair; write the JSON and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the folder of the latency study (runs.csv)")
    parser.add_argument("--repeats", type=int, default=1000, help="calls per batch-1 median")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved passes over the two models")
    args = parser.parse_args()
    records = measure(args.study, args.repeats, args.rounds)
    if not records:
        raise SystemExit(f"{args.study}: no finished run planned its ratios (latency_plan.json)")
    (args.study / "latency_accuracy.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.study / "latency_accuracy.md").write_text("\n".join(table(records)) + "\n")
    print("\n".join(table(records)))


if __name__ == "__main__":
    main()
