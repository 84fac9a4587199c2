"""Centralized ADMP end to end on the pooled unlabeled target data.

teacher on labeled source -> mask phase (adversary + ADMM with rho schedule) -> m = Z, fold,
physical removal -> KD fine-tune -> BatchNorm recalibration on target -> evaluate -> export.
Target labels are used only by ``accuracy`` for reporting, never by a training step.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn

from admp import admm
from admp.data.tasks import CrossDomainTask, build_task
from admp.masks import MaskDict, gated, group_sizes, mask_sparsity, ones_masks, zeros_masks
from admp.metrics import accuracy
from admp.models import example_input
from admp.seeding import seed_everything, torch_generator
from admp.surgery import prune_model
from admp.trainer import admp_local_train, kd_finetune, per_device_bn_accuracy, recalibrate_bn, teacher_targets
from admp.config import ScenarioConfig, to_yaml
from admp.teacher import prepare_teacher, resolve_arch
from server.export import export_and_measure
from server.report import RunDirectory, print_summary


@dataclass
class MaskState:
    """ADMP mask-phase state: hard mask m, soft mask s, auxiliary Z, dual U, penalty rho."""

    m: MaskDict
    s: MaskDict
    z: MaskDict
    u: MaskDict
    rho: float

    @classmethod
    def initial(cls, sizes: dict[str, int]) -> "MaskState":
        """m = s = Z = 1, U = 0, rho = 0 (no penalty until the first Z-step)."""
        return cls(ones_masks(sizes), ones_masks(sizes), ones_masks(sizes), zeros_masks(sizes), 0.0)


def masked_accuracy(student: nn.Module, groups, m: MaskDict, x_calib: torch.Tensor,
                    x: torch.Tensor, y: torch.Tensor) -> float:
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


def run_centralized(cfg: ScenarioConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole centralized pipeline; returns the summary (also written to the run dir)."""
    console = console or Console()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed = cfg.run.seed
    seed_everything(seed)
    task = build_task(cfg.data, seed)
    arch = resolve_arch(cfg)
    run = RunDirectory(cfg.run.out_dir, cfg.run.name)
    run.write_text("config.yaml", to_yaml(cfg))
    console.print(f"[bold]FedADMP centralized[/bold] dataset={task.name} arch={arch} "
                  f"devices={task.num_devices} p={cfg.admp.prune_ratio} -> {run.path}")

    teacher, teacher_info = prepare_teacher(cfg, task)
    torch.save(teacher.state_dict(), run.file("teacher.pt"))
    devices = [task.device(i) for i in range(task.num_devices)]
    target_train, target_test = task.pooled(devices)  # target_train.y is never used for training
    teacher_acc = accuracy(teacher, target_test.x, target_test.y)
    console.print(f"teacher: source val {teacher_info['source_val_acc']:.2f}%  target test {teacher_acc:.2f}%  "
                  f"({len(target_train)} unlabeled target samples, {len(target_test)} target test)")

    hp, sched = cfg.admp, cfg.schedule
    # KD targets as the devices get them (teacher BN per device, or once on the pooled data): like for like.
    kd_teacher = teacher
    if hp.teacher_bn == "fleet":
        kd_teacher = copy.deepcopy(teacher)
        recalibrate_bn(kd_teacher, target_train.x)
    targets = torch.cat([teacher_targets(kd_teacher, d.train.x, hp.teacher_bn) for d in devices])  # (N, K)
    student = copy.deepcopy(teacher)
    groups = student.channel_groups()
    state = MaskState.initial(group_sizes(student, groups))
    gen = torch_generator(seed, "admp")
    step = z_steps = 0
    for epoch in range(sched.mask_epochs):
        start = time.perf_counter()
        stats = admp_local_train(student, teacher, groups, state.m, state.s, state.z, state.u,
                                 state.rho, target_train.x, 1, hp, gen, targets)
        admm_step = hp.rho > 0 and epoch + 1 >= sched.warmup_epochs and (epoch + 1 - sched.warmup_epochs) % sched.admm_every == 0
        if admm_step:
            z_steps += 1
            state.z = admm.z_step(state.m, state.u, admm.ramped_ratio(hp.prune_ratio, z_steps, hp.prune_ramp))
            state.u = admm.u_step(state.u, state.m, state.z)
            new_rho = hp.rho if state.rho == 0 else admm.rho_next(state.rho, hp.rho_gamma, hp.rho_max)
            state.u = admm.rescale_dual(state.u, state.rho, new_rho)
            state.rho = new_rho
        step += 1
        row = {"phase": "mask", "step": step, "epoch": epoch + 1,
               "target_acc": masked_accuracy(student, groups, state.m, target_train.x, target_test.x, target_test.y),
               "divergence": stats["divergence"], "loss": stats["loss"], "rho": state.rho,
               "soft_sparsity": mask_sparsity(state.m), "hard_sparsity": mask_sparsity(state.z),
               "primal_residual": admm.primal_residual(state.m, state.z),
               "mean_soft_mask": float(torch.cat(list(state.s.values())).mean()),
               "seconds": round(time.perf_counter() - start, 3)}
        run.log_metrics(row)
        console.print(f"mask epoch {epoch + 1:>3}/{sched.mask_epochs}  acc {row['target_acc']:6.2f}  "
                      f"D {row['divergence']:.4f}  rho {state.rho:.3g}  m<0.5 {row['soft_sparsity']:.2f}")

    # Merge: m = Z (a final projection of m + U), fold, physically remove.
    keep = admm.z_step(state.m, state.u, hp.prune_ratio)
    torch.save({"student": student.state_dict(), "keep": keep}, run.file("student_masked.pt"))
    example = example_input(student)
    pruned = prune_model(student, groups, keep, example)
    recalibrate_bn(pruned, target_train.x)
    merged_acc = accuracy(pruned, target_test.x, target_test.y)
    channels_pruned = 1 - sum(int(k.sum()) for k in keep.values()) / sum(k.numel() for k in keep.values())
    step += 1
    run.log_metrics({"phase": "merge", "step": step, "epoch": 0, "target_acc": merged_acc,
                     "channels_pruned": channels_pruned})
    console.print(f"merged: {channels_pruned:.0%} of channels removed, target acc {merged_acc:.2f}%")

    ft_gen = torch_generator(seed, "finetune")
    for epoch in range(sched.finetune_epochs):
        start = time.perf_counter()
        lr = cosine_lr(sched.finetune_lr, epoch, sched.finetune_epochs)
        stats = kd_finetune(pruned, teacher, target_train.x, 1, hp, ft_gen, lr=lr, targets=targets)
        step += 1
        acc = accuracy(pruned, target_test.x, target_test.y)
        run.log_metrics({"phase": "finetune", "step": step, "epoch": epoch + 1, "target_acc": acc,
                         "divergence": stats["divergence"], "channels_pruned": channels_pruned,
                         "seconds": round(time.perf_counter() - start, 3)})
        console.print(f"finetune epoch {epoch + 1:>3}/{sched.finetune_epochs}  acc {acc:6.2f}  D {stats['divergence']:.4f}")
    recalibrate_bn(pruned, target_train.x)
    pooled_acc = accuracy(pruned, target_test.x, target_test.y)
    final_acc, teacher_adapted = pooled_acc, None
    splits = [(d.train.x, d.test.x, d.test.y) for d in devices]
    if cfg.federation.bn_recalibration == "local":  # evaluate as the federated runs do (like for like)
        final_acc = per_device_bn_accuracy(pruned, splits)
        console.print(f"per-device BN: student {final_acc:.2f}% (pooled BN {pooled_acc:.2f}%)")
    if hp.teacher_bn == "local":
        teacher_adapted = per_device_bn_accuracy(teacher, splits)
    elif hp.teacher_bn == "fleet":
        teacher_adapted = accuracy(kd_teacher, target_test.x, target_test.y)
    return _finish(run, cfg, task, arch, teacher, teacher_info, teacher_acc, pruned, groups,
                   merged_acc, final_acc, channels_pruned, console, pooled_acc, teacher_adapted)


def _finish(run: RunDirectory, cfg: ScenarioConfig, task: CrossDomainTask, arch: str,
            teacher: nn.Module, teacher_info: dict, teacher_acc: float, pruned: nn.Module, groups,
            merged_acc: float, final_acc: float, channels_pruned: float, console: Console,
            pooled_acc: float, teacher_adapted: float | None) -> dict[str, Any]:
    """Export, measure and summarise the pruned model.

    ``target_acc`` is the accuracy under the run's BN mode (per-device BN for ``local``), the one a
    federated run reports; ``target_acc_pooled_bn`` keeps the pooled-statistics figure.
    """
    report = export_and_measure(run, teacher, pruned, groups, task.source_val.x[:32])
    report["teacher"] |= {"target_acc": teacher_acc, **teacher_info}
    if teacher_adapted is not None:  # the teacher with target BN statistics (teacher_bn), no training
        report["teacher"]["target_acc_target_bn"] = teacher_adapted
    report["student"] |= {"target_acc": final_acc, "target_acc_after_merge": merged_acc,
                          "target_acc_pooled_bn": pooled_acc}
    report["exports"].append("student_masked.pt")
    summary: dict[str, Any] = {
        "run_dir": str(run.path), "mode": "centralized", "dataset": task.name, "arch": arch,
        "seed": cfg.run.seed, "prune_ratio": cfg.admp.prune_ratio, "channels_pruned": channels_pruned,
        **report,
    }
    summary["param_reduction"] = summary["teacher"]["params"] / summary["student"]["params"]
    summary["mac_reduction"] = summary["teacher"]["macs"] / summary["student"]["macs"]
    run.write_json("summary.json", summary)
    run.plot_training()
    print_summary(summary, f"Centralized ADMP on {task.name} (p = {cfg.admp.prune_ratio})", console)
    return summary
