"""The privacy-utility table and plot of ``studies/privacy.yaml`` (issue 14 item 4).

    python benchmarks/privacy_utility.py [--runs results/privacy/runs.csv]

Reads the study's ``runs.csv`` (tasks ``eps_inf``, ``eps_inf_norm``, ``eps_<e>``) and writes, next to
it, ``privacy_utility.md`` (mean +- std over the seeds that finished: deployed accuracy, the epsilon
each run reports, channels pruned, MB per device and round), ``privacy_utility.json`` and
``accuracy_vs_epsilon.png`` (the non-private runs drawn as horizontal lines).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"eps_inf": "no privacy", "eps_inf_norm": "no noise, norm layers only"}


def _stat(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation (0 for one value) and count."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarise(rows: list[dict[str, str]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{task: {method: {figure: stat}}} over the finished seeds."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["method"])].append(row)
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = defaultdict(dict)
    for (task, method), runs in sorted(groups.items()):
        figures = {
            "accuracy": [float(r["student_acc"]) for r in runs],
            "channels_pruned": [float(r["channels_pruned"]) for r in runs],
            "mb_per_client_round": [float(r["mb_per_client_round"]) for r in runs if r.get("mb_per_client_round")],
        }
        eps = [float(r["epsilon"]) for r in runs if r.get("epsilon")]
        if eps:
            figures["epsilon"] = eps
        out[task][method] = {k: _stat(v) for k, v in figures.items() if v}
    return dict(out)


def _target(task: str) -> float | None:
    """The epsilon a task asked for (None: not private)."""
    return float(task.split("_", 1)[1]) if task.startswith("eps_") and task[4:].isdigit() else None


def table(summary: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    """The Markdown table: one row per task and method."""
    lines = [
        "| setting | method | deployed acc % | epsilon (delta = 1/N) | channels pruned | MB / device / round | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    order = sorted(summary, key=lambda t: (_target(t) is not None, -(_target(t) or 0.0), t))
    for task in order:
        for method, figs in summary[task].items():
            acc, eps = figs["accuracy"], figs.get("epsilon")
            setting = LABELS[task] if task in LABELS else f"epsilon {_target(task):g}"
            eps_text = f"{eps['mean']:.2f}" if eps else "inf"
            mb = figs.get("mb_per_client_round", {"mean": float("nan")})["mean"]
            lines.append(
                f"| {setting} | {method} | {acc['mean']:.2f} ± {acc['std']:.2f} | {eps_text} | "
                f"{figs['channels_pruned']['mean']:.0%} | {mb:.2f} | {acc['n']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict[str, dict[str, dict[str, float]]]], path: Path) -> None:
    """Accuracy vs epsilon per method, the non-private runs as dashed lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted({m for figs in summary.values() for m in figs})
    for i, method in enumerate(methods):
        colour = f"C{i}"
        private = sorted((e, f[method]) for t, f in summary.items() if (e := _target(t)) and method in f)
        if private:
            xs = [e for e, _ in private]
            ax.errorbar(
                xs,
                [f["accuracy"]["mean"] for _, f in private],
                [f["accuracy"]["std"] for _, f in private],
                marker="o",
                color=colour,
                label=f"{method}, private",
                capsize=3,
            )
        for task, style in (("eps_inf", "--"), ("eps_inf_norm", ":")):
            if method in summary.get(task, {}):
                ax.axhline(
                    summary[task][method]["accuracy"]["mean"], ls=style, color=colour, label=f"{method}, {LABELS[task]}"
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon (delta = 1/N)")
    ax.set_ylabel("deployed target accuracy %")
    ax.set_title("Privacy-utility: 1,000 devices, 50 a round")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Read the study's runs, write the table, the JSON and the plot beside them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "results" / "privacy" / "runs.csv")
    args = parser.parse_args()
    with args.runs.open() as handle:
        rows = list(csv.DictReader(handle))
    summary = summarise(rows)
    out = args.runs.parent
    (out / "privacy_utility.md").write_text(table(summary))
    (out / "privacy_utility.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "accuracy_vs_epsilon.png")
    print(table(summary))


if __name__ == "__main__":
    main()
