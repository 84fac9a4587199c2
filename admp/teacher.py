"""The teacher: trained on labeled source data (or loaded), then frozen; plus its content hash."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
from torch import nn

from admp.augment import InputNorm, set_input_normalisation
from admp.metrics import accuracy
from admp.models import build_model
from admp.source import train_supervised
from admp_config.base import ConfigError
from admp_config.schema import ScenarioConfig
from admp_config.sections import TeacherSpec
from admp_config.seeding import derive_seed, torch_generator
from admp_data.tasks import DEFAULT_ARCH, CrossDomainTask, arch_for_shape


def resolve_arch(cfg: ScenarioConfig, input_shape: tuple[int, ...]) -> str:
    """The model family: ``model.arch``, or when it is ``auto`` the dataset's default (for an npz
    file, the one its samples' shape calls for: ``arch_for_shape``)."""
    if cfg.model.arch != "auto":
        return cfg.model.arch
    return DEFAULT_ARCH.get(cfg.data.dataset) or arch_for_shape(input_shape)


def initial_model(cfg: ScenarioConfig, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The architecture for samples of ``input_shape`` with its seeded initial weights (identical on
    every machine)."""
    torch.manual_seed(derive_seed(cfg.run.seed, "init"))
    arch = resolve_arch(cfg, input_shape)
    try:
        return build_model(arch, num_classes, cfg.model.width, input_shape)
    except ValueError as exc:  # a family that cannot take the data's samples: before any training
        raise ConfigError(f"model.arch: {exc}") from exc


def configure_input(model: nn.Module, recipe: TeacherSpec, source_x: torch.Tensor) -> None:
    """The model's input layer as the recipe says: source statistics (``normalise``), grey conversion
    (``grey_input``) and per-sample normalisation (``input_stats: image``, images and windows only;
    ``auto``: colour images, by the rule of the appearance study)."""
    colour = source_x.dim() == 4 and source_x.shape[1] == 3
    per_image = recipe.input_stats == "image" or (recipe.input_stats == "auto" and colour)
    if per_image and source_x.dim() < 3:
        raise ConfigError(
            "teacher.input_stats: 'image' needs images or sensor windows (N, C, ...); "
            f"these samples are feature vectors of shape {tuple(source_x.shape[1:])}"
        )
    if recipe.grey_input and source_x.dim() != 4:
        raise ConfigError(
            f"teacher.grey_input: needs images (N, C, H, W); these samples have shape {tuple(source_x.shape[1:])}"
        )
    if recipe.normalise:
        set_input_normalisation(model, source_x, grey=recipe.grey_input, per_image=per_image)
        return
    for module in model.modules():
        if isinstance(module, InputNorm):
            module.set_mode(recipe.grey_input, per_image)


def prepare_teacher(cfg: ScenarioConfig, task: CrossDomainTask) -> tuple[nn.Module, dict[str, Any]]:
    """Train the teacher on labeled source data, or load ``teacher.checkpoint`` (weights only)."""
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    info: dict[str, Any] = {}
    if cfg.teacher.checkpoint:
        try:
            state = torch.load(cfg.teacher.checkpoint, map_location="cpu", weights_only=True)
            teacher.load_state_dict(state)
        except (OSError, RuntimeError, KeyError) as exc:
            raise ConfigError(f"teacher.checkpoint: cannot load {cfg.teacher.checkpoint} ({exc})") from exc
        info["loaded_from"] = cfg.teacher.checkpoint
    else:
        start = time.perf_counter()
        configure_input(teacher, cfg.teacher, task.source_train.x)
        source, val = task.source_train, task.source_val
        history = train_supervised(
            teacher, source.x, source.y, cfg.teacher, torch_generator(cfg.run.seed, "teacher"), val=(val.x, val.y)
        )
        info["train_seconds"] = round(time.perf_counter() - start, 2)
        info["final_loss"] = history["losses"][-1] if history["losses"] else None
        info["kept_epoch"] = history["kept_epoch"]  # chosen on the source validation split
    info["source_val_acc"] = accuracy(teacher, task.source_val.x, task.source_val.y)
    return teacher.eval(), info


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes of a state dict: the teacher's identity."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
