"""The Python API: what the ``fedadmp`` subcommands do, as functions that return their results.

    from simulations.api import simulate, centralized, study, show

    summary = simulate("simulations/scenarios/federated_digits.yaml", ["federation.mask_rounds=4"])
    summary["student"]["target_acc"], summary["run_dir"]

Each run writes its directory exactly as the command line does (config, metrics, summary, plots,
checkpoints, exports); the functions return what a notebook needs from it, so that nobody has to
find the newest folder by hand. Config and data errors raise ``admp_config.base.ConfigError`` or
``admp_data.sources.DataError`` before anything is trained.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from admp_config.schema import ScenarioConfig, config_from_overrides, load_config

SCENARIOS = Path(__file__).parent / "scenarios"


def scenario_config(scenario: str | Path | None, overrides: Sequence[str], default: Path) -> ScenarioConfig:
    """The config of ``scenario`` with ``overrides``; without a file, the demo scenario ``default``,
    unless the overrides name their own ``data.dataset``: then the built-in defaults, so that none of
    the demo's data settings (its ``samples_per_device``, partition, sizes) are carried onto other data."""
    if scenario is not None:
        return load_config(scenario, overrides=list(overrides))
    if any(o.partition("=")[0].strip() == "data.dataset" for o in overrides):
        return config_from_overrides(list(overrides))
    return load_config(default, overrides=list(overrides))


def simulate(
    scenario: str | Path | None = None,
    overrides: Sequence[str] = (),
    resume: str | Path | None = None,
    verbose: bool = False,
) -> dict[str, Any] | None:
    """A federated run on Flower's Simulation Engine (``fedadmp simulate``); its summary (``summary.json``,
    with ``run_dir``), or None when the run paused (``federation.stop_after_round``). ``resume``: a run
    directory to continue (its own config, plus ``overrides``); ``verbose``: Flower's and Ray's logs."""
    from simulations.federated import run_federated_simulation

    if resume is not None:
        cfg = load_config(Path(resume) / "config.yaml", overrides=["federation.stop_after_round=0", *overrides])
    else:
        cfg = scenario_config(scenario, overrides, SCENARIOS / "federated_digits.yaml")
    cfg.run.out_dir = str(Path(cfg.run.out_dir).resolve())
    return run_federated_simulation(cfg, resume=None if resume is None else str(resume), verbose=verbose)


def centralized(scenario: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Centralized ADMP on the pooled unlabeled target data (``fedadmp centralized``); its summary."""
    from simulations.centralized import run_centralized

    return run_centralized(scenario_config(scenario, overrides, SCENARIOS / "centralized_digits.yaml"))


def study(path: str | Path) -> dict[str, Any]:
    """Run or resume a study (``fedadmp study``): its output folder and every finished run's row of
    ``runs.csv`` (strings, as the file holds them)."""
    from simulations.study import run_study

    out = run_study(path)
    with (out / "runs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"out_dir": str(out), "runs": rows}


def show(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's summary and per-round metrics rows (``fedadmp show``); one clear error when the
    folder is not a finished run."""
    from admp_config.base import ConfigError

    path = Path(run_dir)
    summary_file, metrics_file = path / "summary.json", path / "metrics.json"
    if not summary_file.is_file():
        raise ConfigError(f"{path}: no summary.json (not a run directory, or the run has not finished)")
    try:
        summary = json.loads(summary_file.read_text())
        rows = json.loads(metrics_file.read_text()) if metrics_file.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: summary.json or metrics.json is not JSON ({exc})") from exc
    if not isinstance(summary, dict) or not isinstance(rows, list):
        raise ConfigError(f"{path}: summary.json must hold an object and metrics.json a list")
    return {"summary": summary, "metrics": rows}


__all__ = ["centralized", "scenario_config", "show", "simulate", "study"]
