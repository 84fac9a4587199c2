"""Where the KD phase's student comes from: the merge of the mask phase (``server.phases``), or a
baseline's start — fedkd's dense teacher copy, naive's cloud-pruned student recovered on the source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from admp.admm import z_step
from admp.masks import MaskDict, zeros_masks
from admp.metrics import accuracy
from admp.models import example_input
from admp.seeding import torch_generator
from admp.source import train_supervised
from admp.surgery import l1_filter_scores, prune_model
from server.rounds import Weights
from server.setup import RunSetup

if TYPE_CHECKING:
    from server.phases import Session


@dataclass
class Start:
    """The plain student that the KD phase starts from."""

    weights: Weights
    keep: MaskDict | None  # None: dense
    mask_rounds_done: int  # KD round numbers continue after these


def baseline_start(session: Session) -> Start:
    """fedkd: the dense teacher copy; naive: L1-norm pruning on the cloud + source fine-tuning."""
    run, cfg = session.run, session.run.cfg
    ckpt, offset = run.checkpoint, cfg.federation.self_training_rounds()  # KD rounds follow the teacher's
    if ckpt is not None and ckpt.phase == "kd":
        return Start(ckpt.student, ckpt.keep or None, ckpt.mask_rounds_done)
    if cfg.federation.strategy == "fedkd":
        return Start(run.teacher.state_dict(), None, offset)
    example = example_input(run.teacher)
    scores = l1_filter_scores(run.teacher, run.groups, example)
    keep = z_step(scores, zeros_masks({g: v.numel() for g, v in scores.items()}), cfg.admp.prune_ratio)
    pruned = prune_model(run.teacher, run.groups, keep, example)
    val_acc = recover_on_source(run, pruned, "naive")
    run.console.print(f"naive: L1-pruned on the cloud, source val acc {val_acc:.2f}%")
    return Start(pruned.state_dict(), keep, offset)


def recover_on_source(run: RunSetup, pruned: nn.Module, stream: str) -> float:
    """Fine-tune a pruned student on the server's own labeled source data (the teacher's recipe, a
    third of its epochs at a fifth of its rate), in place; returns its source validation accuracy.
    Used by naive, and by FedADMP where devices train only normalisation layers (``admp.trainable:
    norm``, the private recipe), which cannot repair what the merge removed: no device data is used."""
    source, val, recipe = run.task.source_train, run.task.source_val, run.cfg.teacher
    gen = torch_generator(run.cfg.run.seed, stream)
    train_supervised(pruned, source.x, source.y, recipe, gen, (val.x, val.y), max(1, recipe.epochs // 3), recipe.lr / 5)
    return accuracy(pruned, val.x, val.y)
