"""Study runner: the plan, skipping finished runs, config errors, and the report (no Ray)."""

import csv
import json

import pytest

from admp.config import ConfigError
from simulations import study as study_mod
from simulations.study_report import write_report

SCENARIO = "run:\n  name: t\nfederation:\n  mask_rounds: 2\n"


def _study(tmp_path, body: str):
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    path = tmp_path / "study.yaml"
    path.write_text(body)
    return path


def test_plan_covers_the_grid_and_fedkd_once(tmp_path):
    spec, _ = study_mod.load_study(_study(tmp_path, "name: s\nprune_ratios: [0.5, 0.6]\nseeds: [0, 1]\n"
                                                    "tasks:\n  - name: a\n    scenario: scenario.yaml\n"))
    ids = [r["run_id"] for r in study_mod.plan(spec)]
    assert len(ids) == 2 * (1 + 2 + 2 + 2)  # per seed: fedkd once, naive/fedadmp/centralized per ratio
    assert "a-fedkd-p0-s1" in ids and "a-fedadmp-p0.6-s0" in ids and len(set(ids)) == len(ids)


@pytest.mark.parametrize("body,needle", [
    ("methods: [fedavg]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n", "methods: 'fedavg' is not one of"),
    ("tasks: []\n", "at least one task"),
    ("tasks:\n  - name: a\n    scenario: scenario.yaml\n    overrides: ['admp.tau=-1']\n", "admp.tau"),
    ("seedz: [1]\n", "unknown key 'seedz'"),
])
def test_bad_study_files_name_the_problem(tmp_path, body, needle):
    with pytest.raises(ConfigError, match=needle):
        study_mod.load_study(_study(tmp_path, body))


def _fake_summary(run_dir, acc):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps([{"round": 1, "target_acc": acc}, {"round": 2, "target_acc": acc + 1}]))
    return {"run_dir": str(run_dir), "teacher": {"target_acc": 70.0, "params": 100, "macs": 1000, "latency_ms": 1.0},
            "student": {"target_acc": acc, "params": 40, "macs": 300, "latency_ms": 0.5}, "channels_pruned": 0.6}


def test_interrupted_study_resumes_and_reports(tmp_path, monkeypatch):
    path = _study(tmp_path, "name: s\nprune_ratios: [0.6]\nseeds: [0, 1]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n")
    calls = []
    accs = {"fedkd": 90.0, "naive": 80.0, "fedadmp": 88.0, "centralized": 89.0}

    def fake_execute(run, base, runs_dir, teachers, console):
        calls.append(run["run_id"])
        if len(calls) == 3 and not getattr(fake_execute, "crashed", False):
            fake_execute.crashed = True
            raise KeyboardInterrupt  # the study is interrupted mid-way
        summary = _fake_summary(runs_dir / run["run_id"], accs[run["method"]] + run["seed"])
        return {**{k: run[k] for k in ("run_id", "method", "prune_ratio", "seed")}, "task": run["task"].name,
                "teacher_acc": 70.0, "student_acc": summary["student"]["target_acc"], "params": 40, "teacher_params": 100,
                "macs": 300, "teacher_macs": 1000, "latency_ms": 0.5, "teacher_latency_ms": 1.0,
                "channels_pruned": 0.6, "wall_seconds": 1.0, "run_dir": summary["run_dir"]}

    monkeypatch.setattr(study_mod, "_execute", fake_execute)
    with pytest.raises(KeyboardInterrupt):
        study_mod.run_study(path)
    out = study_mod.run_study(path)
    assert calls[2] == calls[3]  # the interrupted run is the first one redone; finished ones are skipped
    assert len(calls) == 9  # 8 runs + the interrupted attempt
    with (out / "runs.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 8
    report = (out / "report.md").read_text()
    assert "| FedADMP (ours) | 88.50 ± 0.71 (n=2)" in report
    assert "FedADMP − federated KD, no pruning: -2.00 points" in report
    assert "FedADMP − naive: L1 prune on cloud + fed. KD: +8.00 points" in report
    assert (out / "a_acc_vs_pruning.png").is_file() and (out / "a_acc_vs_round.png").is_file()
