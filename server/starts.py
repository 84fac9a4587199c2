"""Where the KD phase's student comes from: the merge of the mask phase (``server.phases``), or a
baseline's start — fedkd's dense teacher copy, naive's cloud-pruned student recovered on the source."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from admp.masks import MaskDict, gated
from admp.metrics import accuracy
from admp.models import example_input
from admp.source import train_supervised
from admp.surgery import prune_model
from admp.warmstart import cloud_keep, layerwise_keeps
from admp_config.seeding import torch_generator
from server.importance import fleet_choice
from server.setup import RunSetup

if TYPE_CHECKING:
    from server.session import Session


@dataclass
class Start:
    """The plain student that the KD phase starts from."""

    weights: dict[str, Tensor]
    keep: MaskDict | None  # None: dense
    mask_rounds_done: int  # KD round numbers continue after these
    cloud: Start | None = None  # FedADMP: the cloud's start (naive's), a candidate for the export


def baseline_start(session: Session) -> Start:
    """fedkd: the dense teacher copy; naive: L1-norm pruning on the cloud + source fine-tuning."""
    run, cfg = session.run, session.run.cfg
    ckpt, offset = run.checkpoint, run.teacher_rounds_played()  # KD rounds follow the teacher's
    if ckpt is not None and ckpt.phase in ("kd", "quant"):
        return Start(ckpt.student, ckpt.keep or None, ckpt.mask_rounds_done)
    if cfg.federation.strategy == "fedkd":
        return Start(run.teacher.state_dict(), None, offset)
    if cfg.federation.strategy == "fedtiny":
        return fedtiny_start(session, offset)
    if cfg.admp.keep_init == "fisher":  # naive's recipe on the fleet's choice of channels (the ablation)
        return cloud_start(run, offset, fleet_choice(session, offset)())
    return cloud_start(run, offset)


def fedtiny_start(session: Session, offset: int) -> Start:
    """FedTiny's adaptive batch-normalisation selection (Huang et al. 2023, arXiv 2212.01977), at channel
    level and without labels: the cloud prunes the teacher into ``federation.fedtiny_candidates`` keep sets
    (L1 norm, different layer-wise ratios, the same total of channels: ``admp.warmstart.layerwise_keeps``),
    every evaluated device re-estimates each candidate's BN statistics on its own data and scores it, and
    the candidate with the best fleet label-free score (FedTiny: the lowest loss; no label here) is
    recovered on the source as naive's start is. FedTiny's progressive pruning is not part of it."""
    run = session.run
    example = example_input(run.teacher)
    gen = torch_generator(run.cfg.run.seed, "fedtiny")
    keeps = layerwise_keeps(
        run.teacher, run.groups, run.cfg.admp.prune_ratio, example, run.cfg.federation.fedtiny_candidates, gen
    )
    scored: list[tuple[float, int, MaskDict, nn.Module]] = []
    for keep in keeps:
        pruned = prune_model(run.teacher, run.groups, keep, example)
        probe = session.kd_strategy(pruned.state_dict(), keep)
        figures = session.runner.evaluate_all(probe, offset, pruned.state_dict(), local_bn=True)
        scored.append((figures.get("label-free-score", math.inf), len(scored), keep, pruned))
    score, index, keep, pruned = min(scored, key=lambda item: item[:2])
    run.teacher_info["fedtiny_selection"] = {"scores": [s for s, *_ in scored], "chosen": index}
    val_acc = recover_on_source(run, pruned, "naive")
    run.console.print(
        f"fedtiny: candidate {index} of {len(keeps)} (label-free {score:.3f}), source val acc {val_acc:.2f}%"
    )
    return Start(pruned.state_dict(), keep, offset)


def cloud_start(run: RunSetup, offset: int, keep: MaskDict | None = None) -> Start:
    """naive's start: the teacher pruned to the cloud's keep set (``cloud_choice``; or ``keep``) and
    recovered on the source. Also a candidate of every FedADMP run's export."""
    name = _choice_name(run) if keep is None else "the fleet's gate-Fisher keep set"
    keep = cloud_choice(run) if keep is None else keep
    pruned = prune_model(run.teacher, run.groups, keep, example_input(run.teacher))
    val_acc = recover_on_source(run, pruned, "naive")
    run.console.print(f"cloud start: {name}, source val acc {val_acc:.2f}%")
    return Start(pruned.state_dict(), keep, offset)


def cloud_choice(run: RunSetup) -> MaskDict:
    """The keep set decided on the cloud without device data: L1-norm channel pruning of the teacher
    at ratio p, or the keep set of ``admp.keep_path`` under ``keep_init: file`` (the transplant)."""
    if run.given_keep is not None:
        return run.given_keep
    return cloud_keep(run.teacher, run.groups, run.cfg.admp.ratio(), example_input(run.teacher))


def _choice_name(run: RunSetup) -> str:
    return f"keep set of {run.cfg.admp.keep_path}" if run.given_keep is not None else "L1-pruned"


def mask_start(
    run: RunSetup, choose_keep: Callable[[], MaskDict] | None = None
) -> tuple[dict[str, Tensor], MaskDict | None]:
    """The mask phase's dense student and the keep set that m and Z start from (``admp.keep_init``).

    ``none``: the teacher, no keep set (m = Z = 1). Otherwise the cloud's keep set (``l1``, ``file``) or
    the fleet's (``fisher``: ``choose_keep()``), and the teacher recovered on the source under it exactly
    as naive's pruned copy is (the same stream of batches; a gated channel outputs 0, so the gated dense
    model computes what the pruned one does)."""
    init = run.cfg.admp.keep_init
    if init == "none":
        return run.teacher.state_dict(), None
    if init == "fisher":
        if choose_keep is None:
            raise ValueError("keep_init fisher needs the fleet's choice (a federated or pooled measurement)")
        keep, name = choose_keep(), "fleet's gate-Fisher"
    else:
        keep, name = cloud_choice(run), _choice_name(run)
    student = copy.deepcopy(run.teacher)
    with gated(student, run.groups, keep):
        val_acc = recover_on_source(run, student, "naive")
    run.console.print(f"mask phase starts from the {name} keep set, source val acc {val_acc:.2f}%")
    return student.state_dict(), keep


def recover_on_source(run: RunSetup, pruned: nn.Module, stream: str) -> float:
    """Fine-tune a pruned student on the server's own labeled source data (the teacher's recipe, a
    third of its epochs at a fifth of its rate), in place; returns its source validation accuracy.
    Used by naive, and by FedADMP where devices train only normalisation layers (``admp.trainable:
    norm``, the private recipe), which cannot repair what the merge removed: no device data is used."""
    source, val, recipe = run.task.source_train, run.task.source_val, run.cfg.teacher
    gen = torch_generator(run.cfg.run.seed, stream)
    train_supervised(pruned, source.x, source.y, recipe, gen, (val.x, val.y), max(1, recipe.epochs // 3), recipe.lr / 5)
    return accuracy(pruned, val.x, val.y)
