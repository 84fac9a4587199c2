"""One small centralized ADMP run on the embedded default, with hand-checked expectations."""

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from rich.console import Console

from admp.metrics import accuracy
from admp.teacher import initial_model
from admp_config.schema import config_from_overrides, load_config
from admp_data.tasks import build_task
from simulations.budget import epochs_per_round, matched_schedule
from simulations.centralized import run_centralized
from simulations.cli import DEFAULT_CENTRALIZED

# 3 mask epochs, a Z-step after each (warm-up 1, every epoch), 1 KD epoch; pooled BN statistics
SMALL = [
    "admp.keep_init=none",  # the schedule from ones: warm-up, then the first Z-step prunes p
    "schedule.mask_epochs=3",
    "schedule.warmup_epochs=1",
    "schedule.admm_every=1",
    "schedule.finetune_epochs=1",
    "teacher.epochs=4",
    "data.max_source=300",
    "data.samples_per_device=60",
    "federation.bn_recalibration=global",
    "run.threads=2",
    "run.tensorboard=true",
]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(DEFAULT_CENTRALIZED, overrides=[*SMALL, f"run.out_dir={out}"])
    return run_centralized(cfg, Console(quiet=True))


def test_schedule_rho_and_exact_pruning(summary):
    rows = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    assert [r["phase"] for r in rows] == ["mask"] * 3 + ["merge", "finetune"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["rho"] for r in rows[:3]] == pytest.approx([1.0, 1.2, 1.44])  # rho0, then x1.2 per Z-step
    # LeNet: 32 + 64 channels; p = 0.6 keeps ceil(12.8) = 13 and ceil(25.6) = 26 -> 57 of 96 pruned
    assert all(r["hard_sparsity"] == pytest.approx(57 / 96) for r in rows[:3])
    assert summary["student"]["channels"] == {"conv1": 13, "conv2": 26}
    assert summary["channels_pruned"] == pytest.approx(57 / 96)


def test_every_metrics_row_is_in_the_tensorboard_log(summary):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    log = EventAccumulator(str(Path(summary["run_dir"]) / "tensorboard"))
    log.Reload()
    for phase in ("mask", "finetune"):
        logged = [(e.step, e.value) for e in log.Scalars(f"target_acc/{phase}")]
        expected = [(r["step"], r["target_acc"]) for r in rows if r["phase"] == phase]
        assert logged == [(step, pytest.approx(acc)) for step, acc in expected]


def test_reported_accuracies_are_the_saved_models(summary):
    """teacher.pt and the exported ONNX model, run here on the pooled target test set, give the
    figures the summary reports (BN mode ``global``: no device-side step)."""
    run = Path(summary["run_dir"])
    cfg = load_config(run / "config.yaml")
    task = build_task(cfg.data, cfg.run.seed)
    _, test = task.pooled()
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    teacher.load_state_dict(torch.load(run / "teacher.pt", weights_only=True))
    assert summary["teacher"]["target_acc"] == pytest.approx(accuracy(teacher.eval(), test.x, test.y))
    session = ort.InferenceSession(str(run / "pruned_model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: test.x.numpy()})
    onnx_acc = 100.0 * float((torch.from_numpy(logits).argmax(1) == test.y).float().mean())
    assert summary["student"]["target_acc"] == pytest.approx(onnx_acc, abs=1e-4)
    for name in ("config.yaml", "metrics.csv", "summary.json", "training.png", "pruned_model.ts", "student_masked.pt"):
        assert (run / name).is_file(), name


def test_the_federations_budget_gives_the_centralized_schedule():
    """Devices of 100 and 300 samples in batches of 64 take 2 and 5 steps an epoch, so
    min_local_steps = 20 makes them train 10 and 4 epochs: 100*10 + 300*4 = 2,200 samples, 5.5
    passes over the 400 pooled ones; one device of two per round gives E = 2.75 epochs per round."""
    cfg = config_from_overrides(
        [
            "admp.batch_size=64",
            "federation.clients_per_round=1",
            "federation.local_epochs=1",
            "federation.min_local_steps=20",
            "federation.max_local_epochs=0",  # no bound here; the bound is checked below
            "federation.mask_rounds=8",
            "federation.warmup_rounds=3",
            "federation.finetune_rounds=4",
            "federation.teacher_rounds=2",
        ]
    )
    assert epochs_per_round(cfg, [100, 300]) == pytest.approx(2.75)
    sched = matched_schedule(cfg, [100, 300])
    # 8 * 2.75 = 22 mask epochs, 3 * 2.75 = 8.25 -> 8 warm-up, a Z-step every round(2.75) = 3, 4 * 2.75 = 11,
    # 2 * 2.75 = 5.5 -> 6 (round half to even) teacher epochs
    assert (sched.mask_epochs, sched.warmup_epochs, sched.admm_every, sched.finetune_epochs) == (22, 8, 3, 11)
    assert sched.teacher_epochs == 6
    # max_local_epochs = 5 bounds the small device to 5 epochs: 100*5 + 300*4 = 1,700 samples, E = 1700/400/2
    overrides = ["admp.batch_size=64", "federation.clients_per_round=1", "federation.min_local_steps=20"]
    bounded = config_from_overrides([*overrides, "federation.max_local_epochs=5"])
    assert epochs_per_round(bounded, [100, 300]) == pytest.approx(2.125)
