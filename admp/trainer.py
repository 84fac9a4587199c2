"""Training loops in plain PyTorch: the teacher, the local ADMP step, KD fine-tuning, BN recalibration.

``admp_local_train`` is the unit of local work shared by the centralized run and by every
federated client: it trains the student's weights W and relaxed hard mask m on unlabeled target
data towards a frozen teacher's logits (``teacher_targets``), with the soft-mask adversary, while
the ADMM auxiliary Z, dual U and penalty rho of its ``AdmpState`` stay fixed (the caller steps it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import overload

import torch
from torch import nn

from admp.losses import adversary_step, kd_divergence
from admp.masks import MaskDict, clone_masks, gated
from admp.metrics import accuracy
from admp.models import GroupSpec, classifier_of
from admp.objective import FleetPrior, adaptation_loss
from admp.state import AdmpState
from admp_config.sections import AdmpHyper


@overload
def batches(
    x: torch.Tensor, batch_size: int, gen: torch.Generator, y: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
@overload
def batches(
    x: torch.Tensor, batch_size: int, gen: torch.Generator, y: None = None
) -> Iterator[tuple[torch.Tensor, None]]: ...
def batches(
    x: torch.Tensor, batch_size: int, gen: torch.Generator, y: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Shuffled mini-batches of an in-memory tensor (and labels if given); last partial batch kept."""
    for idx in index_batches(len(x), batch_size, gen):
        yield x[idx], (y[idx] if y is not None else None)


def index_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches over n samples (a last batch of one sample is skipped: BatchNorm
    cannot train on it)."""
    order = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) >= 2:
            yield idx


def steps_per_epoch(samples: int, batch_size: int) -> int:
    """SGD steps one epoch of ``batches`` takes (a last batch of one sample is skipped)."""
    return samples // batch_size + (1 if samples % batch_size >= 2 else 0)


def local_epochs_for(samples: int, batch_size: int, epochs: int, min_steps: int, max_epochs: int = 0) -> int:
    """Local epochs so that a device takes at least ``min_steps`` SGD steps in a round (never fewer
    than ``epochs``): a device with little data still moves its weights and masks between Z-steps.
    ``max_epochs`` (> 0) bounds what ``min_steps`` adds: a tiny device does not pass over its few
    samples dozens of times a round, which lets its local self-training drift (client drift)."""
    per_epoch = steps_per_epoch(samples, batch_size)
    if per_epoch == 0 or min_steps <= 0:
        return epochs
    needed = math.ceil(min_steps / per_epoch)
    return max(epochs, min(needed, max_epochs) if max_epochs > 0 else needed)


def trained_parameters(model: nn.Module, hp: AdmpHyper) -> list[nn.Parameter]:
    """The parameters target adaptation trains: all of them, or all but the classifier's (the last
    ``nn.Linear``) with ``freeze_classifier`` — SHOT's hypothesis transfer: the source classifier
    stays fixed and the features move towards it; with ``trainable: norm`` only the normalisation
    layers' scale and shift."""
    if hp.trainable == "norm":
        return [p for mod in norm_layers(model).values() for p in mod.parameters()]
    if not hp.freeze_classifier:
        return list(model.parameters())
    frozen = {id(p) for p in classifier_of(model).parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


def named_batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (1-D and 2-D alike) by module name."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)}


NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every normalisation layer of ``model`` (batch, group, layer norm) by module name."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, NORMS)}


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model``."""
    return list(named_batchnorms(model).values())


@contextmanager
def bn_momentum(model: nn.Module, momentum: float | None) -> Iterator[None]:
    """Every BatchNorm's momentum set to ``momentum`` inside the block, restored after it.

    0.0 freezes the running statistics; None makes them a cumulative average over the batches.
    """
    bns = batchnorms(model)
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = momentum
    try:
        yield
    finally:
        for bn, value in zip(bns, saved, strict=True):
            bn.momentum = value


def frozen_bn_stats(model: nn.Module) -> AbstractContextManager[None]:
    """Train-mode BatchNorm that normalises with batch statistics but leaves running stats as they are.

    Used for the adversary's extra forward pass, so that attacked activations do not leak into the
    statistics that evaluation uses (running = (1 - 0) * running + 0 * batch).
    """
    return bn_momentum(model, 0.0)


def _soft_grads(
    student: nn.Module,
    groups: GroupSpec,
    m: MaskDict,
    s: MaskDict,
    xb: torch.Tensor,
    t_logits: torch.Tensor,
    tau: float,
) -> MaskDict:
    """dD/ds for the adversary, with W and m held fixed."""
    leaf = {g: v.detach().clone().requires_grad_(True) for g, v in s.items()}
    detached_m = {g: v.detach() for g, v in m.items()}
    with gated(student, groups, detached_m, leaf), frozen_bn_stats(student):
        div = kd_divergence(t_logits, student(xb), tau)
    grads = torch.autograd.grad(div, list(leaf.values()))
    return dict(zip(leaf, grads, strict=True))


@torch.no_grad()
def teacher_targets(teacher: nn.Module, x: torch.Tensor, bn: str = "local", batch_size: int = 512) -> torch.Tensor:
    """The teacher's logits (N, K) on unlabeled target data ``x``: the KD targets of that data.

    With ``bn="local"`` a copy of the teacher first re-estimates its BatchNorm statistics on ``x``
    (AdaBN): the source statistics misplace target features, and the re-estimate needs no label.
    Any other mode uses the teacher as given (``fleet``: the server already adapted it).
    Computing the targets once per local update also spares a teacher forward pass per batch.
    """
    model = teacher
    if bn == "local":
        model = copy.deepcopy(teacher)
        recalibrate_bn(model, x)
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _descent_loss(
    student: nn.Module,
    groups: GroupSpec,
    state: AdmpState,
    m_params: MaskDict,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    hp: AdmpHyper,
    prior: FleetPrior | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss on (W, m), divergence D) of one batch (inputs, teacher logits, pseudo labels or None)
    under the gates m * s of ``state``."""
    xb, t_logits, labels = batch
    with gated(student, groups, m_params, state.s):
        loss, div = adaptation_loss(t_logits, student(xb), hp, prior, labels)
    loss = loss + state.penalty(m_params)
    if hp.l1_m > 0:
        loss = loss + hp.l1_m * sum(v.abs().sum() for v in m_params.values())
    return loss, div


def admp_local_train(
    student: nn.Module,
    groups: GroupSpec,
    state: AdmpState,
    x: torch.Tensor,
    targets: torch.Tensor,
    epochs: int,
    hp: AdmpHyper,
    gen: torch.Generator,
    prior: FleetPrior | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Local ADMP epochs on unlabeled target data ``x``; updates the student, ``state.m`` and ``state.s``.

    Per batch: (1) the adversary raises D by moving s within its budget; (2) one SGD step on
    (W, m) for D + lambda_pl*CE_pl (+ lambda_im*IM) + state.penalty(m) + l1_m*|m|_1, with m then
    clipped to [0, 1]. Z, U and rho stay fixed (the caller steps the state). ``targets`` (N, K)
    are the teacher's logits on ``x`` (``teacher_targets``); ``prior`` makes IM's diversity the
    fleet's (``FleetPrior``); ``labels`` (N,) are the centroid pseudo labels of ``x``
    (``admp.centroids.centroid_labels``). Returns mean divergence, loss and samples seen.
    """
    student.train()
    m_params = {g: v.detach().clone().requires_grad_(True) for g, v in state.m.items()}
    opt = torch.optim.SGD(
        [
            {"params": trained_parameters(student, hp), "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"params": list(m_params.values()), "lr": hp.mask_lr, "weight_decay": 0.0},
        ],
        momentum=hp.momentum,
    )
    state.s = clone_masks(state.s)
    sums = {"divergence": 0.0, "loss": 0.0}
    seen = 0
    for _ in range(epochs):
        for idx in index_batches(len(x), hp.batch_size, gen):
            xb, t_logits = x[idx], targets[idx]  # (B, ...), (B, K)
            if hp.adversary:
                grads = _soft_grads(student, groups, m_params, state.s, xb, t_logits, hp.tau)
                state.s = adversary_step(state.s, grads, hp.adv_lr, hp.s_min, hp.adv_eps)
            yb = labels[idx] if labels is not None else None
            loss, div = _descent_loss(student, groups, state, m_params, (xb, t_logits, yb), hp, prior)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for v in m_params.values():
                    v.clamp_(0.0, 1.0)
            sums["divergence"] += div.item() * len(xb)
            sums["loss"] += loss.item() * len(xb)
            seen += len(xb)
    state.m = {g: v.detach() for g, v in m_params.items()}
    return {k: v / max(seen, 1) for k, v in sums.items()} | {"samples": float(seen)}


def kd_finetune(
    student: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    epochs: int,
    hp: AdmpHyper,
    gen: torch.Generator,
    lr: float,
    prior: FleetPrior | None = None,
    labels: torch.Tensor | None = None,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
) -> dict[str, float]:
    """KD adaptation of a plain (pruned or dense) student on unlabeled target data, in place.

    ``targets`` (N, K) are the teacher's logits on ``x``; ``prior`` and ``labels`` as in
    ``admp_local_train``; ``penalty`` (the ADMM quantization term, ``admp.quantize.weight_penalty``) is
    added to every step's loss.
    Returns mean divergence and samples seen.
    """
    student.train()
    opt = torch.optim.SGD(trained_parameters(student, hp), lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    total_div, seen = 0.0, 0
    for _ in range(epochs):
        for idx in index_batches(len(x), hp.batch_size, gen):
            xb, t_logits = x[idx], targets[idx]
            yb = labels[idx] if labels is not None else None
            loss, div = adaptation_loss(t_logits, student(xb), hp, prior, yb)
            if penalty is not None:
                loss = loss + penalty(student)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_div, seen = total_div + div.item() * len(xb), seen + len(xb)
    return {"divergence": total_div / max(seen, 1), "samples": float(seen)}


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, x: torch.Tensor, batch_size: int = 128, masks: tuple[GroupSpec, MaskDict] | None = None
) -> None:
    """Re-estimate BatchNorm running statistics on (target) data ``x`` with a cumulative average.

    With ``masks`` the statistics are taken under those channel gates.
    """
    for bn in batchnorms(model):
        bn.reset_running_stats()
    model.train()
    context = gated(model, *masks) if masks is not None else nullcontext()
    try:
        with context, bn_momentum(model, None):  # None: cumulative average over all batches
            for start in range(0, len(x), batch_size):
                chunk = x[start : start + batch_size]
                if len(chunk) > 1 or start == 0:
                    model(chunk)
    finally:
        model.eval()


def per_device_bn_accuracy(model: nn.Module, devices: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    """Accuracy in % over devices when each re-estimates BN statistics on its own unlabeled data.

    ``devices`` holds (unlabeled train x, test x, test y) per device. This is what a federated run
    with ``bn_recalibration: local`` reports (a sample-weighted mean of per-device accuracies), so a
    centralized model evaluated with it is compared like for like. ``model`` is left unchanged.
    """
    correct, total = 0.0, 0
    for x_train, x_test, y_test in devices:
        probe = copy.deepcopy(model)
        recalibrate_bn(probe, x_train)
        correct += accuracy(probe, x_test, y_test) * len(y_test) / 100.0
        total += len(y_test)
    return 100.0 * correct / max(total, 1)
