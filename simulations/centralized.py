"""Centralized ADMP end to end on the pooled unlabeled target data.

teacher on labeled source -> mask phase (adversary + ADMM with rho schedule) -> m = Z, fold,
physical removal -> KD fine-tune -> BatchNorm recalibration on target -> evaluate -> export.
Target labels are used only by ``accuracy`` for reporting, never by a training step.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from rich.console import Console
from torch import nn

from admp.centroids import student_pseudo_labels
from admp.importance import measured_fisher, stepped_keep
from admp.masks import MaskDict, gated, group_sizes, pruned_fraction
from admp.metrics import accuracy
from admp.models import GroupSpec, example_input
from admp.objective import uses_centroids
from admp.state import AdmmSettings, AdmpState
from admp.surgery import prune_model
from admp.trainer import admp_local_train, kd_finetune, per_device_bn_accuracy, recalibrate_bn, teacher_targets
from admp_config.base import ConfigError
from admp_config.schema import ScenarioConfig, to_yaml
from admp_config.sections import AdmpHyper
from admp_config.seeding import torch_generator
from admp_data.sources import Split
from admp_data.tasks import Device
from server.setup import RunSetup
from server.starts import mask_start, recover_on_source
from server.summary import INFERENCE, write_summary
from simulations.budget import matched_schedule


def masked_accuracy(
    student: nn.Module, groups: GroupSpec, m: MaskDict, x_calib: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> float:
    """Eval accuracy of the student gated by m (s = 1), BN statistics re-estimated on ``x_calib``.

    Training runs under the adversary's attenuation s, so the running statistics it leaves do not
    match the s = 1 network that is evaluated; recalibrating a copy removes that mismatch.
    """
    probe = copy.deepcopy(student)
    recalibrate_bn(probe, x_calib, masks=(groups, m))
    with gated(probe, groups, m):
        return accuracy(probe, x, y)


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine-decayed learning rate for step 0..total-1 (ends at base/total-ish, never 0)."""
    return base * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def is_admm_epoch(cfg: ScenarioConfig, epoch: int) -> bool:
    """Whether mask epoch ``epoch`` (0-based) ends with a Z/U step: after the warm-up, every
    ``admm_every`` epochs."""
    done, sched = epoch + 1, cfg.schedule
    return done >= sched.warmup_epochs and (done - sched.warmup_epochs) % sched.admm_every == 0


def kd_targets(run: RunSetup, devices: list[Device], pooled_x: torch.Tensor) -> torch.Tensor:
    """The KD targets (N, K) on the pooled data, as the devices would get them (teacher BN per
    device, or once on the pooled data): like for like with the federation."""
    mode, kd_teacher = run.cfg.admp.teacher_bn, run.teacher
    if mode == "fleet":
        kd_teacher = copy.deepcopy(run.teacher)
        recalibrate_bn(kd_teacher, pooled_x)
    return torch.cat([teacher_targets(kd_teacher, d.train.x, mode) for d in devices])


def pooled_labels(
    student: nn.Module,
    x: torch.Tensor,
    hp: AdmpHyper,
    sizes: list[int],
    masks: tuple[GroupSpec, MaskDict] | None = None,
) -> torch.Tensor | None:
    """Centroid pseudo labels (N,) of the pooled data (``sizes``: the devices' shares, in order) for one
    epoch, under the gates ``masks``: by the centroids of the whole data (what the fleet's aggregated
    sums give, ``centroids: fleet``), or of each device's data with its own BN statistics
    (``device``), as the devices would label them; None when unused."""
    if not uses_centroids(hp):
        return None
    if hp.centroids == "fleet":
        return student_pseudo_labels(student, x, masks=masks)[0]
    local = hp.teacher_bn == "local"
    return torch.cat([student_pseudo_labels(student, part, None, masks, local)[0] for part in x.split(sizes)])


def self_trained_teacher(run: RunSetup, x: torch.Tensor, sizes: list[int]) -> nn.Module:
    """A copy of the teacher after ``schedule.teacher_epochs`` of self-training on the pooled data (IM
    + centroid pseudo labels, no KD), from the BN statistics the federation would start from."""
    hp = run.cfg.admp.model_copy(update={"lambda_kd": 0.0})
    teacher, gen = copy.deepcopy(run.teacher), torch_generator(run.cfg.run.seed, "teacher-self-training")
    if hp.teacher_bn == "fleet":
        recalibrate_bn(teacher, x)
    for epoch in range(run.cfg.schedule.teacher_epochs):
        labels = pooled_labels(teacher, x, hp, sizes)
        stats = kd_finetune(teacher, x, torch.zeros(len(x), run.task.num_classes), 1, hp, gen, hp.lr, labels=labels)
        run.console.print(f"teacher self-training epoch {epoch + 1}: samples {int(stats['samples'])}")
    return teacher.eval()


def mask_phase(
    run: RunSetup,
    student: nn.Module,
    train_x: torch.Tensor,
    sizes: list[int],
    targets: torch.Tensor,
    test: tuple[torch.Tensor, torch.Tensor],
    start_keep: MaskDict | None = None,
) -> AdmpState:
    """ADMP epochs on the pooled data, the state stepped after each epoch as the server does after
    each round; returns the final state (the student is trained in place). ``start_keep``: the keep
    set m and Z start from (``admp.keep_init``), else ones."""
    cfg, hp, groups = run.cfg, run.cfg.admp, run.groups
    settings = AdmmSettings.from_hyper(hp)
    state = (
        AdmpState.warm_started(settings, start_keep)
        if start_keep is not None
        else AdmpState.initial(settings, group_sizes(student, groups))
    )
    gen = torch_generator(cfg.run.seed, "admp")
    for epoch in range(cfg.schedule.mask_epochs):
        start = time.perf_counter()
        labels = pooled_labels(student, train_x, hp, sizes, (groups, state.m))
        stats = admp_local_train(student, groups, state, train_x, targets, 1, hp, gen, labels=labels)
        if is_admm_epoch(cfg, epoch):
            state.admm_step()
        row = {
            "phase": "mask",
            "step": epoch + 1,
            "epoch": epoch + 1,
            "target_acc": masked_accuracy(student, groups, state.m, train_x, *test),
            "divergence": stats["divergence"],
            "loss": stats["loss"],
        }
        row |= {k.replace("-", "_"): v for k, v in state.metrics().items()}
        row |= {
            "mean_soft_mask": float(torch.cat(list(state.s.values())).mean()),
            "seconds": round(time.perf_counter() - start, 3),
        }
        run.run_dir.log_metrics(row)
        run.console.print(
            f"mask epoch {epoch + 1:>3}/{cfg.schedule.mask_epochs}  acc {row['target_acc']:6.2f}  "
            f"D {row['divergence']:.4f}  rho {state.rho:.3g}  m<0.5 {row['soft_sparsity']:.2f}"
        )
    return state


def finetune_phase(
    run: RunSetup,
    pruned: nn.Module,
    train_x: torch.Tensor,
    sizes: list[int],
    targets: torch.Tensor,
    test: tuple[torch.Tensor, torch.Tensor],
    first_step: int,
    pruned_share: float,
) -> None:
    """KD epochs of the physically pruned student with a cosine learning rate, in place."""
    sched, gen = run.cfg.schedule, torch_generator(run.cfg.run.seed, "finetune")
    for epoch in range(sched.finetune_epochs):
        start = time.perf_counter()
        lr = cosine_lr(run.cfg.admp.finetune_lr, epoch, sched.finetune_epochs)
        labels = pooled_labels(pruned, train_x, run.cfg.admp, sizes)
        stats = kd_finetune(pruned, train_x, targets, 1, run.cfg.admp, gen, lr=lr, labels=labels)
        acc = accuracy(pruned, *test)
        run.run_dir.log_metrics(
            {
                "phase": "finetune",
                "step": first_step + epoch,
                "epoch": epoch + 1,
                "target_acc": acc,
                "divergence": stats["divergence"],
                "channels_pruned": pruned_share,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        run.console.print(
            f"finetune epoch {epoch + 1:>3}/{sched.finetune_epochs}  acc {acc:6.2f}  D {stats['divergence']:.4f}"
        )


def run_centralized(cfg: ScenarioConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole centralized pipeline; returns the summary (also written to the run dir)."""
    if cfg.quantize.active:  # the reference is float32; ADMM quantization is a federated phase
        raise ConfigError("quantize.bits: the centralized run exports float32 weights; quantize federated runs")
    run = RunSetup.open(cfg, console=console)  # config, seed, run directory, teacher
    task, hp = run.task, cfg.admp
    run.console.print(
        f"[bold]FedADMP centralized[/bold] dataset={task.name} arch={run.arch} "
        f"devices={task.num_devices} p={hp.prune_ratio} -> {run.run_dir.path}"
    )
    devices = [task.device(i) for i in range(task.num_devices)]
    if cfg.schedule.budget == "federation":  # the resolved schedule goes into the run's config
        cfg.schedule = matched_schedule(cfg, [len(d.train) for d in devices])
        run.run_dir.write_text("config.yaml", to_yaml(cfg))
        s = cfg.schedule
        run.console.print(
            f"schedule of the federation's budget: {s.mask_epochs} mask epochs (warm-up {s.warmup_epochs}, "
            f"Z-step every {s.admm_every}), {s.finetune_epochs} fine-tune epochs"
        )
    train, test_split = task.pooled(devices)  # train.y is never used for training
    sizes = [len(d.train) for d in devices]
    test = (test_split.x, test_split.y)
    teacher_acc = accuracy(run.teacher, *test)
    run.console.print(
        f"teacher: source val {run.teacher_info['source_val_acc']:.2f}%  target test "
        f"{teacher_acc:.2f}%  ({len(train)} unlabeled target samples, {len(test_split)} target test)"
    )
    source_teacher = run.teacher
    if cfg.schedule.teacher_epochs:  # every later step starts from, and distils from, the adapted teacher
        run.teacher = self_trained_teacher(run, train.x, sizes)
        run.teacher_info["target_acc_self_trained"] = accuracy(run.teacher, *test)
        run.console.print(f"teacher self-trained: target test {run.teacher_info['target_acc_self_trained']:.2f}%")
    targets = kd_targets(run, devices, train.x)
    student = copy.deepcopy(run.teacher)
    start_weights, start_keep = mask_start(run, lambda: pooled_fisher_keep(run, train.x))  # ones, or a keep set
    student.load_state_dict(start_weights)
    state = mask_phase(run, student, train.x, sizes, targets, test, start_keep)
    keep = state.merge_mask()  # m = Z: a final projection of m + U
    torch.save({"student": student.state_dict(), "keep": keep}, run.run_dir.file("student_masked.pt"))
    recovery = "student" if hp.trainable == "norm" else hp.merge_recovery  # as the federated merge does
    pruned = prune_model(run.teacher if recovery == "teacher" else student, run.groups, keep, example_input(student))
    if recovery != "none":
        recover_on_source(run, pruned, "merge")
    recalibrate_bn(pruned, train.x)
    merged_acc = accuracy(pruned, *test)
    pruned_share = pruned_fraction(keep)
    step = cfg.schedule.mask_epochs + 1
    run.run_dir.log_metrics(
        {"phase": "merge", "step": step, "epoch": 0, "target_acc": merged_acc, "channels_pruned": pruned_share}
    )
    run.console.print(f"merged: {pruned_share:.0%} of channels removed, target acc {merged_acc:.2f}%")
    finetune_phase(run, pruned, train.x, sizes, targets, test, step + 1, pruned_share)
    recalibrate_bn(pruned, train.x)
    return _finish(run, pruned, keep, devices, test_split, source_teacher, (teacher_acc, merged_acc))


def _finish(
    run: RunSetup,
    pruned: nn.Module,
    keep: MaskDict,
    devices: list[Device],
    test: Split,
    source_teacher: nn.Module,
    accuracies: tuple[float, float],
) -> dict[str, Any]:
    """Evaluate as the federated runs do (per-device BN where they use it), then the shared summary.

    ``target_acc`` is the deployed accuracy under the run's BN mode (each device adapting BN with
    ``fedadmp adapt-bn`` for ``local``), the one a federated run reports; ``target_acc_as_exported``
    is ``pruned_model.onnx`` as written (BN statistics of the pooled target data).
    """
    cfg, console = run.cfg, run.console
    teacher_acc, merged_acc = accuracies
    pooled_acc = final_acc = accuracy(pruned, test.x, test.y)
    splits = [(d.train.x, d.test.x, d.test.y) for d in devices]
    if cfg.federation.bn_recalibration == "local":
        final_acc = per_device_bn_accuracy(pruned, splits)
        console.print(f"per-device BN: student {final_acc:.2f}% (pooled BN {pooled_acc:.2f}%)")
    teacher: dict[str, Any] = {"target_acc": teacher_acc}
    if cfg.admp.teacher_bn == "local":  # the teacher with target BN statistics, no training
        teacher["target_acc_target_bn"] = per_device_bn_accuracy(source_teacher, splits)
    elif cfg.admp.teacher_bn == "fleet":
        adapted = copy.deepcopy(source_teacher)
        recalibrate_bn(adapted, torch.cat([d.train.x for d in devices]))
        teacher["target_acc_target_bn"] = accuracy(adapted, test.x, test.y)
    fields = {
        "mode": "centralized",
        "prune_ratio": cfg.admp.prune_ratio,
        "teacher": teacher,
        "student": {
            "target_acc": final_acc,
            "inference": INFERENCE[cfg.federation.bn_recalibration],
            "target_acc_as_exported": pooled_acc,
            "target_acc_after_merge": merged_acc,
        },
    }
    return write_summary(
        run,
        pruned,
        keep,
        fields,
        f"Centralized ADMP on {run.task.name} (p = {cfg.admp.prune_ratio})",
        exports=("student_masked.pt",),
    )


def pooled_fisher_keep(run: RunSetup, x: torch.Tensor) -> MaskDict:
    """``keep_init: fisher`` on the pooled target data: the keep set of the teacher's largest gate Fisher
    (``admp.importance``), as the fleet's choice of a federated run measures it device by device."""
    gen = torch_generator(run.cfg.run.seed, "gatefisher")

    def measure(keep: MaskDict | None) -> MaskDict:
        return {g: v / len(x) for g, v in measured_fisher(run.teacher, run.groups, x, gen, keep).items()}

    return stepped_keep(measure, run.cfg.admp.prune_ratio, run.cfg.admp.fisher_steps)
