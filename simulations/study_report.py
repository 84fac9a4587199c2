"""Tables and plots of a study: mean ± std over seeds per task, accuracy vs pruning, vs round."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {
    "source_only": "source-only teacher",
    "source_only_bn": "source-only teacher + target BN statistics (no training)",
    "fedkd": "federated KD, no pruning",
    "naive": "naive: L1 prune on cloud + fed. KD",
    "fedtiny": "FedTiny: adaptive-BN selection + fed. KD",
    "fedadmp": "FedADMP (ours)",
    "centralized": "centralized ADMP (pooled target)",
}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def spread(values: list[float]) -> str:
    """``mean ± std (n=N)`` of a list, two decimals."""
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})"


def load_rows(out: Path) -> list[dict[str, Any]]:
    """runs.csv with numbers parsed."""
    with (out / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.setdefault("variant", "")
        row["variant"] = row["variant"] or ""
        for key in ("teacher_acc_target_bn", "final_divergence"):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else None
        for key in ("prune_ratio", "teacher_acc", "student_acc", "latency_ms", "teacher_latency_ms", "channels_pruned"):
            row[key] = float(row[key])
        for key in ("seed", "params", "teacher_params", "macs", "teacher_macs"):
            row[key] = int(float(row[key]))
    return rows


def task_table(rows: list[dict[str, Any]], ratio: float) -> tuple[str, dict[str, float]]:
    """Markdown table for one task at ``ratio`` and the mean accuracy per method."""
    lines = ["| method | target acc % (mean ± std) | params | MACs | CPU latency b1 (ms) |", "|---|---|---|---|---|"]
    means: dict[str, float] = {}
    # the teacher's figures per seed from a federated run where there is one (the centralized run measures
    # "teacher + target BN" on the pooled test data, the federated ones per device, as the students are)
    teacher_by_seed = {r["seed"]: r for r in sorted(rows, key=lambda r: r["method"] != "centralized")}  # last wins
    if teacher_by_seed:
        t = list(teacher_by_seed.values())
        means["source_only"] = mean_std([r["teacher_acc"] for r in t])[0]
        latency = statistics.fmean(r["teacher_latency_ms"] for r in t)
        cost = f"{t[0]['teacher_params']:,} | {t[0]['teacher_macs']:,} | {latency:.3f}"
        lines.append(f"| {LABELS['source_only']} | {spread([r['teacher_acc'] for r in t])} | {cost} |")
        local = [r["teacher_acc_target_bn"] for r in t if r["teacher_acc_target_bn"] is not None]
        if local:
            means["source_only_bn"] = mean_std(local)[0]
            lines.append(f"| {LABELS['source_only_bn']} | {spread(local)} | {cost} |")
    for method in ("fedkd", "naive", "fedtiny", "fedadmp", "centralized"):
        sel = [r for r in rows if r["method"] == method and (method == "fedkd" or abs(r["prune_ratio"] - ratio) < 1e-9)]
        if not sel:
            continue
        means[method] = mean_std([r["student_acc"] for r in sel])[0]
        lines.append(
            f"| {LABELS[method]} | {spread([r['student_acc'] for r in sel])} | {sel[0]['params']:,} | "
            f"{sel[0]['macs']:,} | {statistics.fmean(r['latency_ms'] for r in sel):.3f} |"
        )
    return "\n".join(lines), means


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def ablation_table(rows: list[dict[str, Any]], ratio: float) -> str:
    """Markdown table of the variants against default FedADMP at ``ratio`` on the same seeds."""
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"]))
    if not variants:
        return ""
    seeds = {r["seed"] for r in rows if r["variant"]}
    base = [
        r
        for r in rows
        if r["method"] == "fedadmp" and not r["variant"] and r["seed"] in seeds and abs(r["prune_ratio"] - ratio) < 1e-9
    ]
    base_acc = mean_std([r["student_acc"] for r in base])[0] if base else None
    base_div = _mean_or_none([r["final_divergence"] for r in base])
    lines = ["| variant | target acc % (mean ± std) | Δ acc | final D | Δ D |", "|---|---|---|---|---|"]
    if base:
        lines.append(
            f"| FedADMP (default) | {spread([r['student_acc'] for r in base])} | — | {_num(base_div, '.4f')} | — |"
        )
    for name in variants:
        sel = [r for r in rows if r["variant"] == name]
        acc = mean_std([r["student_acc"] for r in sel])[0]
        div = _mean_or_none([r["final_divergence"] for r in sel])
        d_acc = None if base_acc is None else acc - base_acc
        d_div = None if div is None or base_div is None else div - base_div
        lines.append(
            f"| {name} ({sel[0]['method']}) | {spread([r['student_acc'] for r in sel])} | {_num(d_acc, '+.2f')} | "
            f"{_num(div, '.4f')} | {_num(d_div, '+.4f')} |"
        )
    return "\n".join(lines)


def plot_vs_ratio(rows: list[dict[str, Any]], task: str, path: Path) -> None:
    """Target accuracy against the share of channels pruned, one line per method."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in ("naive", "fedtiny", "fedadmp", "centralized"):
        by_ratio: dict[float, list[float]] = defaultdict(list)
        pruned: dict[float, list[float]] = defaultdict(list)
        for r in rows:
            if r["method"] == method:
                by_ratio[r["prune_ratio"]].append(r["student_acc"])
                pruned[r["prune_ratio"]].append(r["channels_pruned"])
        if by_ratio:
            xs = sorted(by_ratio)
            stats = [mean_std(by_ratio[x]) for x in xs]
            ax.errorbar(
                [statistics.fmean(pruned[x]) for x in xs],
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                marker="o",
                capsize=3,
                label=LABELS[method],
            )
    for method, style in (("fedkd", "--"),):
        sel = [r["student_acc"] for r in rows if r["method"] == method]
        if sel:
            ax.axhline(statistics.fmean(sel), linestyle=style, color="gray", label=LABELS[method])
    teacher = {r["seed"]: r["teacher_acc"] for r in rows}
    if teacher:
        ax.axhline(statistics.fmean(teacher.values()), linestyle=":", color="black", label=LABELS["source_only"])
    ax.set(xlabel="share of channels removed", ylabel="target test accuracy (%)", title=task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _points(metrics: list[dict[str, Any]], clock: bool) -> list[tuple[float, float]]:
    """(round, accuracy) of the evaluated rounds; ``clock``: (fleet seconds so far, accuracy) instead."""
    points, elapsed = [], 0.0
    for m in metrics:
        elapsed += float(m.get("fleet_seconds") or 0.0)
        if m.get("target_acc") is not None:
            points.append((elapsed if clock else m["round"], m["target_acc"]))
    return points


def plot_vs_round(rows: list[dict[str, Any]], task: str, ratio: float, path: Path, clock: bool = False) -> bool:
    """Federated evaluation accuracy per round (first seed) for the federated methods; ``clock``: against
    the simulated fleet time instead (``federation.profiles``; nothing drawn for runs without it).
    Returns whether the plot exists.

    The per-round figures live in each run's directory, which is not committed: when one of them is
    gone (a study resumed on another machine), an existing plot is kept rather than redrawn short."""
    seed = min(r["seed"] for r in rows)
    series: dict[str, Path] = {}
    for method in ("fedkd", "naive", "fedtiny", "fedadmp"):
        sel = [
            r
            for r in rows
            if r["method"] == method
            and r["seed"] == seed
            and (method == "fedkd" or abs(r["prune_ratio"] - ratio) < 1e-9)
        ]
        if sel:
            series[method] = Path(sel[0]["run_dir"]) / "metrics.json"
    if path.exists() and not all(f.is_file() for f in series.values()):
        return True
    runs = {method: json.loads(file.read_text()) for method, file in series.items() if file.is_file()}
    if clock and not any(m.get("fleet_seconds") for metrics in runs.values() for m in metrics):
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, metrics in runs.items():
        points = _points(metrics, clock)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=LABELS[method])
    xlabel = "simulated fleet time (s)" if clock else "round"
    ax.set(xlabel=xlabel, ylabel="target test accuracy (%)", title=f"{task}, p = {ratio}, seed {seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PUBLISHED = {  # single-machine source-free adaptation with a LeNet-class network, cited where known
    "mnist_usps": "98.0 (SHOT)",
    "usps_mnist": "98.4 (SHOT)",
}  # Liang et al. 2020 (arXiv 2002.08546), table of digit results


def overview_table(means_by_task: dict[str, dict[str, float]]) -> str:
    """One row per task: mean accuracy of every method, FedADMP's distances (points) and the published
    single-machine anchor."""
    cols = ["source_only", "source_only_bn", "fedkd", "naive", "fedtiny", "fedadmp", "centralized"]
    short = ["teacher", "teacher + target BN", "fed. KD (dense)", "naive", "FedTiny", "FedADMP", "centralized ADMP"]
    others = ("source_only_bn", "fedkd", "naive", "fedtiny", "centralized")
    lines = [
        "| task | " + " | ".join(short) + " | vs teacher + BN | vs fed. KD | vs naive (≥ −0.3) | vs FedTiny "
        "| vs centralized | published, single machine |",
        "|---" * (len(cols) + 7) + "|",
    ]
    for task, means in means_by_task.items():
        cells = [_num(means.get(c), ".2f") for c in cols]
        gaps = [_num(means["fedadmp"] - means[o], "+.2f") if "fedadmp" in means and o in means else "—" for o in others]
        lines.append(f"| {task} | " + " | ".join([*cells, *gaps, PUBLISHED.get(task, "—")]) + " |")
    return "\n".join(lines)


SWEPT = ("naive", "fedtiny", "fedadmp", "centralized")  # the methods that prune


def _cell(values: list[float]) -> str:
    return spread(values) if values else "—"


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy per pruning ratio (mean ± std over the seeds that ran it) of every pruning method, and in
    points: naive's loss to the dense fed. KD, FedADMP's lead over naive and its distance to the dense."""
    dense = [r["student_acc"] for r in rows if r["method"] == "fedkd"]
    if not dense:
        return ""
    base = statistics.fmean(dense)
    lines = [
        f"| p | naive | FedTiny | FedADMP | centralized | naive − dense ({base:.2f}) | FedADMP − naive "
        "| FedADMP − dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ratio in sorted({r["prune_ratio"] for r in rows if r["method"] != "fedkd"}):
        accs = {
            m: [r["student_acc"] for r in rows if r["method"] == m and abs(r["prune_ratio"] - ratio) < 1e-9]
            for m in SWEPT
        }
        mean = {m: _mean_or_none(list(v)) for m, v in accs.items()}
        naive, fedadmp = mean["naive"], mean["fedadmp"]
        lead = fedadmp - naive if fedadmp is not None and naive is not None else None
        lines.append(
            f"| {ratio:g} | " + " | ".join(_cell(accs[m]) for m in SWEPT) + " | "
            f"{_num(naive - base if naive is not None else None, '+.2f')} | {_num(lead, '+.2f')} | "
            f"{_num(fedadmp - base if fedadmp is not None else None, '+.2f')} |"
        )
    return "\n".join(lines)


def write_report(out: Path, spec: Any) -> Path:
    """report.md with one table per task at the study's ``table_ratio``, the distances, the plots."""
    rows = load_rows(out)
    ratio = spec.table_ratio
    sweep = f" (ratios other than {ratio}: seeds {spec.sweep_seeds})" if spec.sweep_seeds else ""
    parts = [
        f"# Study `{spec.name}`\n",
        f"Seeds {spec.seeds}, pruning ratios {spec.prune_ratios}{sweep}; tables at "
        f"p = {ratio}. Target labels are used for evaluation only.\n",
    ]
    means_by_task: dict[str, dict[str, float]] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        all_rows = [r for r in rows if r["task"] == task]
        task_rows = [r for r in all_rows if not r["variant"]]
        table, means = task_table(task_rows, ratio)
        means_by_task[task] = means
        parts += [f"## {task}\n", table, ""]
        if "fedadmp" in means:
            for other, goal in (
                ("fedkd", "goal at p = 0.9: at most 1.5 lower"),
                ("naive", "goal: at least -0.3; at least +2 where naive loses 2 to the dense"),
                ("fedtiny", "the published federated pruning baseline"),
                ("centralized", "what federation costs"),
            ):
                if other in means:
                    parts.append(f"- FedADMP − {LABELS[other]}: {means['fedadmp'] - means[other]:+.2f} points ({goal})")
        sweep = sweep_table(task_rows)
        if sweep:
            parts += ["", "By pruning ratio (means over the seeds that ran it):", "", sweep]
        ablations = ablation_table(all_rows, ratio)
        if ablations:
            parts += [
                "",
                f"Ablations at p = {ratio} (final D: last training KD divergence on the devices' "
                "unlabeled data, no labels needed):",
                "",
                ablations,
            ]
        plot_vs_ratio(task_rows, task, out / f"{task}_acc_vs_pruning.png")
        plot_vs_round(task_rows, task, ratio, out / f"{task}_acc_vs_round.png")
        parts += ["", f"![{task}: accuracy vs pruning]({task}_acc_vs_pruning.png)"]
        parts += [f"![{task}: accuracy vs round]({task}_acc_vs_round.png)"]
        if plot_vs_round(task_rows, task, ratio, out / f"{task}_acc_vs_fleet_time.png", clock=True):
            parts += [f"![{task}: accuracy vs fleet time]({task}_acc_vs_fleet_time.png)"]
        parts += [""]
    parts[2:2] = [
        f"Mean target accuracy % at p = {ratio} and FedADMP's distances in points (goals in brackets):\n",
        overview_table(means_by_task),
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
