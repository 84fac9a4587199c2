"""One small centralized ADMP run on the embedded default, end to end."""

import json
import math

import pytest
from rich.console import Console

from simulations.centralized import run_centralized
from simulations.cli import DEFAULT_CENTRALIZED
from admp.config import load_config


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(DEFAULT_CENTRALIZED, overrides=[f"run.out_dir={out}", "run.threads=2"])
    return run_centralized(cfg, Console(quiet=True))


def test_pruned_model_respects_the_ratio_per_group(summary):
    p = summary["prune_ratio"]
    for group, width in summary["teacher"]["channels"].items():
        kept = summary["student"]["channels"][group]
        assert 1 <= kept <= math.ceil((1 - p) * width)
    assert summary["student"]["params"] < summary["teacher"]["params"] / 2
    assert summary["student"]["macs"] < summary["teacher"]["macs"] / 2


def test_pruned_student_is_within_two_points_of_the_teacher(summary):
    assert summary["student"]["target_acc"] >= summary["teacher"]["target_acc"] - 2.0
    assert summary["teacher"]["source_val_acc"] > 90.0  # the teacher learned the source


def test_run_directory_has_every_artefact(summary):
    from pathlib import Path

    run = Path(summary["run_dir"])
    for name in ("config.yaml", "metrics.csv", "metrics.json", "summary.json", "training.png",
                 "pruned_model.onnx", "pruned_model.ts", "student_masked.pt", "teacher.pt"):
        assert (run / name).is_file(), name
    rows = json.loads((run / "metrics.json").read_text())
    phases = [r["phase"] for r in rows]
    assert phases.count("mask") == 15 and phases.count("merge") == 1 and phases.count("finetune") == 8
    assert rows[-1]["target_acc"] >= 0 and summary["onnx_max_abs_diff"] < 1e-4
    assert json.loads((run / "summary.json").read_text())["student"]["params"] == summary["student"]["params"]
