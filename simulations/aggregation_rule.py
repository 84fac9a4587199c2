"""The rule of ``studies/aggregation.yaml`` that settles the default ``federation.robust.aggregation``.

Per task, over the seeds where every arm ran: boosted gap(M) = clean - boosted_M and clean cost(M) =
clean - clean_M (3-seed means of the deployed accuracy, points; ``clean`` is FedADMP under the mean on
a clean fleet). A mode qualifies when, on every task, its boosted gap is at most 1.0 and its clean
cost at most 0.3; the default is the qualifying mode with the lowest mean clean cost, a tie (within
0.05) going to the first of clip, trimmed_mean, median. No qualifying mode: the mean stays.

    python -m simulations.aggregation_rule results/aggregation/runs.csv
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

MODES = ("mean", "clip", "trimmed_mean", "median")  # the tie order after the mean
MAX_BOOSTED_GAP, MAX_CLEAN_COST, TIE = 1.0, 0.3, 0.05


def arm(variant: str) -> tuple[str, str] | None:
    """(condition, mode) of a study arm: '' is the clean mean, ``boosted_M`` / ``clean_M`` the others."""
    if variant == "":
        return "clean", "mean"
    condition, _, mode = variant.partition("_")
    return (condition, mode) if condition in ("clean", "boosted") and mode in MODES else None


def gaps(rows: list[dict[str, str]]) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {mode: {"boosted_gap", "clean_cost", "seeds"}}} over the seeds where every arm of a task ran."""
    acc: dict[tuple[str, str, str, int], float] = {}
    for r in rows:
        found = arm(r["variant"])
        if found is not None:
            condition, mode = found
            acc[(r["task"], condition, mode, int(r["seed"]))] = float(r["student_acc"])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in sorted({key[0] for key in acc}):
        arms = [("clean", "mean")] + [
            (c, m) for m in MODES for c in ("clean", "boosted") if (c, m) != ("clean", "mean")
        ]
        seeds = sorted({s for t, *_, s in acc if t == task})
        full = [s for s in seeds if all((task, c, m, s) in acc for c, m in arms)]
        if not full:
            continue
        clean = [acc[(task, "clean", "mean", s)] for s in full]
        out[task] = {
            mode: {
                "boosted_gap": statistics.mean(clean) - statistics.mean(acc[(task, "boosted", mode, s)] for s in full),
                "clean_cost": statistics.mean(clean) - statistics.mean(acc[(task, "clean", mode, s)] for s in full),
                "seeds": len(full),
            }
            for mode in MODES
        }
    return out


def settle(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """The default mode by the rule (``mean`` when none qualifies or nothing was measured)."""
    qualifying = [
        mode
        for mode in MODES
        if table
        and all(
            t[mode]["boosted_gap"] <= MAX_BOOSTED_GAP and t[mode]["clean_cost"] <= MAX_CLEAN_COST
            for t in table.values()
        )
    ]
    if not qualifying:
        return "mean"
    cost = {mode: statistics.mean(t[mode]["clean_cost"] for t in table.values()) for mode in qualifying}
    best = min(cost.values())
    return next(mode for mode in MODES[1:] + MODES[:1] if mode in cost and cost[mode] <= best + TIE)


def main(argv: list[str]) -> None:
    """Print the table and the settled default."""
    with Path(argv[0]).open() as handle:
        table = gaps(list(csv.DictReader(handle)))
    print("| task | mode | seeds | boosted gap | clean cost |")
    print("|---|---|---|---|---|")
    for task, per_mode in table.items():
        for mode, figures in per_mode.items():
            gap, cost = figures["boosted_gap"], figures["clean_cost"]
            print(f"| {task} | {mode} | {figures['seeds']:.0f} | {gap:+.2f} | {cost:+.2f} |")
    print(f"default (boosted gap <= {MAX_BOOSTED_GAP}, clean cost <= {MAX_CLEAN_COST} on every task): {settle(table)}")


if __name__ == "__main__":
    main(sys.argv[1:])
