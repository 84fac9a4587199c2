"""Supervised training on labeled source data with the source recipe (teacher, and the naive
baseline's source fine-tune): SGD with a cosine schedule, label smoothing, augmentation
(``admp.augment``), and the epoch kept by its source-validation accuracy."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from admp.augment import augment, photometric_applies, randomise_appearance
from admp.metrics import accuracy
from admp.trainer import batches
from admp_config.sections import TeacherSpec


def _supervised_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: TeacherSpec,
    gen: torch.Generator,
) -> float:
    """One epoch of label-smoothed cross-entropy (on augmented batches if the recipe says so); mean loss."""
    model.train()
    total, count = 0.0, 0
    looks = photometric_applies(recipe.photometric, x)
    for xb, yb in batches(x, recipe.batch_size, gen, y):
        inputs = augment(xb, gen) if recipe.augment else xb
        inputs = randomise_appearance(inputs, gen) if looks else inputs
        loss = F.cross_entropy(model(inputs), yb, label_smoothing=recipe.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, count = total + loss.item() * len(xb), count + len(xb)
    return total / max(count, 1)


def train_supervised(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: TeacherSpec,
    gen: torch.Generator,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """Train on labeled (source) data with the source recipe (SGD + cosine schedule, label smoothing,
    augmentation; ``epochs``/``lr`` override the recipe's). With ``val`` = (x, y) and
    ``recipe.select_on_val``, the weights of the epoch with the best validation accuracy are kept
    (ties: the later epoch). Returns the losses and validation accuracies per epoch and the kept epoch.
    """
    epochs = recipe.epochs if epochs is None else epochs
    opt = torch.optim.SGD(model.parameters(), lr=lr or recipe.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    losses: list[float] = []
    val_accs: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, epochs + 1):
        losses.append(_supervised_epoch(model, opt, x, y, recipe, gen))
        sched.step()
        if val is not None and recipe.select_on_val:
            val_accs.append(accuracy(model, *val))
            if best is None or val_accs[-1] >= best[0]:
                best = (val_accs[-1], epoch, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    return {"losses": losses, "val_acc": val_accs, "kept_epoch": best[1] if best is not None else epochs}
