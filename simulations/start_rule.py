"""The label-free rule of ``studies/pruning.yaml`` that settles FedADMP's default start (``admp.keep_init``).

For each task, the starts (FedADMP as it ran with ``none``; the variants ``fedadmp_l1`` and
``fedadmp_fisher``) are ranked by the label-free score of the model each run exported (the export
rule's score: lower is better; no target label); the start that ranks first on more tasks wins, a tie
going to the lower mean rank. ``python -m simulations.start_rule results/pruning/runs.csv``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

STARTS = {"": "none", "fedadmp_l1": "l1", "fedadmp_fisher": "fisher"}


def exported_score(run_dir: Path) -> float | None:
    """The label-free score of what a run exported (its chosen candidate, or the teacher)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    selection = summary.get("selection") or {}
    chosen = selection.get("chosen")
    score = (
        selection.get("teacher_score")
        if chosen == "teacher"
        else (selection.get("candidates") or {}).get(chosen, {}).get("score")
    )
    return None if score is None else float(score)


def settle(rows: list[dict[str, str]], ratio: float, seed: int) -> tuple[str, dict[str, dict[str, float]]]:
    """(the winning start, {task: {start: score}}) over the tasks where every start ran."""
    scores: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"] != "fedadmp" or r["variant"] not in STARTS:
            continue
        if abs(float(r["prune_ratio"]) - ratio) > 1e-9 or int(r["seed"]) != seed:
            continue
        score = exported_score(Path(r["run_dir"]))
        if score is not None:
            scores.setdefault(r["task"], {})[STARTS[r["variant"]]] = score
    complete = {t: s for t, s in scores.items() if len(s) == len(STARTS)}
    wins = dict.fromkeys(STARTS.values(), 0)
    ranks = dict.fromkeys(STARTS.values(), 0.0)
    for per_start in complete.values():
        order = sorted(per_start, key=lambda name: per_start[name])
        wins[order[0]] += 1
        for rank, name in enumerate(order):
            ranks[name] += rank / max(len(complete), 1)
    winner = min(STARTS.values(), key=lambda name: (-wins[name], ranks[name]))
    return winner, complete


def main(argv: list[str]) -> None:
    with Path(argv[0]).open() as handle:
        rows = list(csv.DictReader(handle))
    winner, table = settle(rows, 0.9, 0)
    print("| task | " + " | ".join(STARTS.values()) + " |")
    print("|---|" + "---|" * len(STARTS))
    for task, per_start in table.items():
        print(f"| {task} | " + " | ".join(f"{per_start[s]:.3f}" for s in STARTS.values()) + " |")
    print(f"winner (lower label-free score on more tasks): {winner}")


if __name__ == "__main__":
    main(sys.argv[1:])
