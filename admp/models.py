"""Model families for ADMP, each declaring its prunable channel groups.

A *channel group* is a set of BatchNorm layers whose output channels are tied together: pruning
channel c of the group removes channel c from every listed layer (and the matching inputs
downstream). Plain convs form a group of one; the convs feeding one residual stream (stem or
shortcut plus each block's last conv) share a group, because the residual add ties them.

Every conv is followed by a BatchNorm, and the channel gates of ADMP act on BatchNorm outputs
(see ``admp.masks``), which makes folding and physical removal exact.
"""

from __future__ import annotations

import torch
from torch import nn

from admp.augment import InputNorm
from admp.groups import GroupSpec, classifier_of
from admp_config.choices import ARCHS, FACTORY_PATH

__all__ = ["ARCHITECTURES", "GroupSpec", "build_model", "classifier_of", "example_input", "groups_of"]


def _shape(family: str, input_shape: tuple[int, ...], dims: int, minimum: int, what: str) -> tuple[int, ...]:
    """``input_shape`` checked for a family: ``dims`` entries, spatial sizes >= ``minimum`` (ValueError
    naming the family, what it takes and the shape it got)."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != dims or min(shape, default=0) < 1 or min(shape[1:], default=minimum) < minimum:
        raise ValueError(f"{family} takes {what}; the data's samples have shape {shape}")
    return shape


class LeNet(nn.Module):
    """LeNet-style CNN for small images (N, C, H, W), H and W >= 16 (28x28 digits, grey or RGB, by default)."""

    def __init__(
        self, num_classes: int = 10, width: float = 1.0, hidden: int = 128, input_shape: tuple[int, ...] = (1, 28, 28)
    ) -> None:
        super().__init__()
        c, h, w = self.input_shape = _shape("lenet", input_shape, 3, 16, "images (C, H, W) of at least 16x16")
        c1, c2 = max(2, round(32 * width)), max(2, round(64 * width))
        self.norm = InputNorm(c)  # source statistics, set with the teacher (raw inputs in, also on devices)
        self.conv1 = nn.Conv2d(c, c1, 5)  # (N,C,H,W) -> (N,c1,H-4,W-4)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 5)  # (N,c1,H',W') -> (N,c2,H'-4,W'-4), H' = (H-4)//2
        self.bn2 = nn.BatchNorm2d(c2)
        self.pool = nn.MaxPool2d(2)
        hh, ww = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2  # after conv-pool twice: 4x4 for 28x28
        self.fc1 = nn.Linear(c2 * hh * ww, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(self.norm(x)))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)  # (N, c2*16)
        logits: torch.Tensor = self.fc2(torch.relu(self.fc1(x)))
        return logits

    def channel_groups(self) -> GroupSpec:
        """Prunable groups: each conv's output channels."""
        return {"conv1": ["bn1"], "conv2": ["bn2"]}


class BasicBlock(nn.Module):
    """Residual block: conv-bn-relu-conv-bn, plus identity or 1x1-conv shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A small residual CNN (ResNet-8 style: stem + 3 stages of one block) for (C, H, W) images (RGB 32x32 by
    default); global average pooling makes any size >= 4x4 work."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, input_shape: tuple[int, ...] = (3, 32, 32)) -> None:
        super().__init__()
        c = [max(2, round(w * width)) for w in (16, 32, 64)]
        self.input_shape = _shape("resnet", input_shape, 3, 4, "images (C, H, W) of at least 4x4")
        in_channels = self.input_shape[0]
        self.norm = InputNorm(in_channels)
        self.stem = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c[0])
        self.stage1 = BasicBlock(c[0], c[0], 1)  # (N,c0,H,W)
        self.stage2 = BasicBlock(c[0], c[1], 2)  # (N,c1,H/2,W/2)
        self.stage3 = BasicBlock(c[1], c[2], 2)  # (N,c2,H/4,W/4)
        self.fc = nn.Linear(c[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(self.norm(x))))
        x = self.stage3(self.stage2(self.stage1(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (N, c2)
        logits: torch.Tensor = self.fc(x)
        return logits

    def channel_groups(self) -> GroupSpec:
        """Residual streams are one group each; each block's inner conv is its own group."""
        return {
            "stream1": ["stem_bn", "stage1.bn2"],
            "stage1.inner": ["stage1.bn1"],
            "stream2": ["stage2.shortcut.1", "stage2.bn2"],
            "stage2.inner": ["stage2.bn1"],
            "stream3": ["stage3.shortcut.1", "stage3.bn2"],
            "stage3.inner": ["stage3.bn1"],
        }


class SensorCNN1D(nn.Module):
    """1-D CNN for sensor windows (N, C, T), T >= 4 (HAPT's 6 channels x 128 steps by default)."""

    def __init__(self, num_classes: int = 6, width: float = 1.0, input_shape: tuple[int, ...] = (6, 128)) -> None:
        super().__init__()
        c = [max(2, round(w * width)) for w in (32, 64, 64)]
        self.input_shape = _shape("cnn1d", input_shape, 2, 4, "sensor windows (C, T) of at least 4 steps")
        in_channels = self.input_shape[0]
        self.norm = InputNorm(in_channels)
        self.conv1 = nn.Conv1d(in_channels, c[0], 5, padding=2)  # (N,C,T) -> (N,c0,T)
        self.bn1 = nn.BatchNorm1d(c[0])
        self.conv2 = nn.Conv1d(c[0], c[1], 5, padding=2)  # (N,c0,T/2) -> (N,c1,T/2)
        self.bn2 = nn.BatchNorm1d(c[1])
        self.conv3 = nn.Conv1d(c[1], c[2], 3, padding=1)  # (N,c1,T/4) -> (N,c2,T/4)
        self.bn3 = nn.BatchNorm1d(c[2])
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(c[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(self.norm(x)))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.bn3(self.conv3(x)))
        logits: torch.Tensor = self.fc(x.mean(dim=2))  # global average pool: (N, c2)
        return logits

    def channel_groups(self) -> GroupSpec:
        """Prunable groups: each conv's output channels."""
        return {"conv1": ["bn1"], "conv2": ["bn2"], "conv3": ["bn3"]}


class FeatureMLP(nn.Module):
    """MLP for feature vectors (N, D): two hidden layers (256 and 128 units at width 1), each
    Linear -> BatchNorm1d -> ReLU, so hidden units are gated and pruned like conv channels."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, input_shape: tuple[int, ...] = (64,)) -> None:
        super().__init__()
        h = [max(2, round(v * width)) for v in (256, 128)]
        self.input_shape = _shape("mlp", input_shape, 1, 1, "feature vectors (D,)")
        self.norm = InputNorm(self.input_shape[0])  # per-feature source mean and std
        self.fc1 = nn.Linear(self.input_shape[0], h[0])  # (N,D) -> (N,h0)
        self.bn1 = nn.BatchNorm1d(h[0])
        self.fc2 = nn.Linear(h[0], h[1])  # (N,h0) -> (N,h1)
        self.bn2 = nn.BatchNorm1d(h[1])
        self.fc = nn.Linear(h[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.fc1(self.norm(x))))
        x = torch.relu(self.bn2(self.fc2(x)))
        logits: torch.Tensor = self.fc(x)
        return logits

    def channel_groups(self) -> GroupSpec:
        """Prunable groups: each hidden layer's units."""
        return {"fc1": ["bn1"], "fc2": ["bn2"]}


ARCHITECTURES: dict[str, type[nn.Module]] = {  # keys: admp_config.choices.Arch
    "lenet": LeNet,
    "resnet": ResNetSmall,
    "cnn1d": SensorCNN1D,
    "mlp": FeatureMLP,
}
assert set(ARCHITECTURES) == set(ARCHS), "admp_config.choices.Arch and the model builders must name the same families"


def groups_of(model: nn.Module) -> GroupSpec:
    """The channel groups a model of this module declares: TypeError for any other module."""
    channel_groups = getattr(type(model), "channel_groups", None)
    if not callable(channel_groups):
        raise TypeError(f"{type(model).__name__} declares no channel_groups()")
    groups: GroupSpec = channel_groups(model)
    return groups


def build_model(
    arch: str, num_classes: int, width: float = 1.0, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """Build a model family by name for samples of ``input_shape`` (None: the family's own default);
    raises ValueError naming an unknown architecture, or a shape the family cannot take."""
    if FACTORY_PATH.match(arch):  # a user's own network (admp.custom); it needs the data's shape
        from admp.custom import build_user_model

        if input_shape is None:
            raise ValueError(f"{arch!r}: a user's model is built for the data's input shape; none was given")
        return build_user_model(arch, num_classes, width, tuple(input_shape))
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)} or 'package.module:factory'")
    extra = {"input_shape": tuple(input_shape)} if input_shape is not None else {}
    return ARCHITECTURES[arch](num_classes=num_classes, width=width, **extra)


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A zero input of the model's declared shape, for tracing, export and MAC counting."""
    shape: object = getattr(model, "input_shape", None)  # set by each family above
    if not isinstance(shape, tuple):
        raise TypeError(f"{type(model).__name__}.input_shape must be a tuple, got {type(shape).__name__}")
    return torch.zeros(batch, *shape)
