"""The source recipe's input handling: per-channel normalisation inside the model, and augmentation.

``InputNorm`` is the first layer of every model family. Its per-channel mean and standard deviation
are buffers set from the labeled source data (``set_input_normalisation``), so they travel with
the weights, are exported with the model (a device feeds raw inputs), and are never trained.

``augment`` draws, per sample and from a seeded generator, a small random affine transform of an
image (rotation within +-``degrees``, shift within +-``shift`` of the side; zero fill), or a time
shift, an amplitude scaling and Gaussian jitter of a sensor window (SHOT's digit recipe for images:
random crop with padding 4 of 28 and rotation of 10 degrees; Um et al. 2017 for wearable sensors).

``randomise_appearance`` is the source recipe for colour images (``teacher.photometric``): each
sample gets a random look, so that the teacher learns the strokes and not their colours or the
background (domain randomisation, Tobin et al. 2017): random stroke and background colours, a
procedural texture behind the strokes, MNIST-M's |texture - image| blend, inversion and grey.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from admp_data.colour import value_noise


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) with every channel replaced by the channels' mean; other inputs as they are."""
    return x.mean(dim=1, keepdim=True).expand_as(x) if x.dim() == 4 else x


class InputNorm(nn.Module):
    """x -> (x - mean_c) / std_c per input channel; identity until the statistics are set.

    Two switches make the input survive a change of colour (``teacher.grey_input``,
    ``teacher.input_stats``): ``grey`` replaces every channel of an image by the channels' mean, so hue
    never reaches the model; ``per_image`` normalises each sample's channels by that sample's own mean and
    std over its positions (instance normalisation of the input), so a shift of mean colour or
    contrast is removed, instead of by the source's statistics. Both are held in the integer ``mode``
    buffer (grey, per_image as 0/1), so they travel with the weights and are part of every export; an
    integer buffer takes no noise in a private round and is never averaged away.
    """

    mean: torch.Tensor  # (C,) buffer
    std: torch.Tensor  # (C,) buffer
    mode: torch.Tensor  # (2,) buffer: grey, per_image

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.register_buffer("mode", torch.zeros(2, dtype=torch.long))
        self.grey, self.per_image = False, False

    def set_mode(self, grey: bool, per_image: bool) -> None:
        """Switch grey conversion and per-sample normalisation on or off."""
        self.mode.copy_(torch.tensor([int(grey), int(per_image)]))
        self._sync()

    def _sync(self) -> None:
        self.grey, self.per_image = bool(self.mode[0]), bool(self.mode[1])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # type: ignore[no-untyped-def]
        # a model saved without the switches loads with both off
        state_dict.setdefault(prefix + "mode", torch.zeros(2, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        self._sync()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grey:
            x = to_grey(x)
        if self.per_image and x.dim() > 2:
            positions = tuple(range(2, x.dim()))
            return (x - x.mean(dim=positions, keepdim=True)) / x.std(dim=positions, keepdim=True).clamp_min(1e-3)
        shape = (1, -1, *([1] * (x.dim() - 2)))  # (1, C, 1[, 1]) for (N, C, ...) inputs
        return (x - self.mean.view(shape)) / self.std.view(shape)


def set_input_normalisation(
    model: nn.Module, x: torch.Tensor, floor: float = 1e-3, grey: bool = False, per_image: bool = False
) -> None:
    """Set every ``InputNorm`` of ``model``: its switches, and the per-channel mean and std of ``x``
    (N, C, ...) as the model sees it (after the grey conversion where ``grey``)."""
    if grey:
        x = to_grey(x)
    dims = [d for d in range(x.dim()) if d != 1]
    mean, std = x.mean(dim=dims), x.std(dim=dims).clamp_min(floor)  # (C,), (C,)
    for module in model.modules():
        if isinstance(module, InputNorm):
            module.mean.copy_(mean)
            module.std.copy_(std)
            module.set_mode(grey, per_image)


def _image_affine(x: torch.Tensor, gen: torch.Generator, degrees: float, shift: float) -> torch.Tensor:
    n = len(x)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)  # (N,)
    moves = (torch.rand(n, 2, generator=gen) * 2 - 1) * 2 * shift  # (N, 2), grid units span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, moves[:, 0]], 1), torch.stack([sin, cos, moves[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _sensor_jitter(x: torch.Tensor, gen: torch.Generator, shift: float, scale: float, noise: float) -> torch.Tensor:
    n, steps = len(x), x.shape[-1]
    max_shift = max(1, round(shift * steps))
    offsets = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen)
    index = (torch.arange(steps).view(1, -1) - offsets.view(-1, 1)) % steps  # (N, T): circular shift
    shifted = torch.gather(x, 2, index.unsqueeze(1).expand(-1, x.shape[1], -1))
    gains = 1 + (torch.rand(n, 1, 1, generator=gen) * 2 - 1) * scale  # (N, 1, 1)
    std = x.std(dim=(0, 2), keepdim=True)  # (1, C, 1)
    return shifted * gains + torch.randn(x.shape, generator=gen) * noise * std


def _feature_jitter(x: torch.Tensor, gen: torch.Generator, scale: float, noise: float) -> torch.Tensor:
    gains = 1 + (torch.rand(len(x), 1, generator=gen) * 2 - 1) * scale  # (N, 1)
    std = x.std(dim=0, keepdim=True) if len(x) > 1 else torch.ones_like(x[:1])  # (1, D)
    return x * gains + torch.randn(x.shape, generator=gen) * noise * std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A randomly perturbed copy of a batch: images (N, C, H, W) get small rotations and shifts,
    sensor windows (N, C, T) time shifts, scaling and jitter, feature vectors (N, D) scaling and jitter."""
    if x.dim() == 4:
        return _image_affine(x, gen, degrees=10.0, shift=4 / 28)
    if x.dim() == 3:
        return _sensor_jitter(x, gen, shift=0.1, scale=0.1, noise=0.05)
    if x.dim() == 2:
        return _feature_jitter(x, gen, scale=0.1, noise=0.05)
    return x


def _random_colours(n: int, c: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, 1, 1) background and stroke colours per sample, at least 0.3 apart in mean level."""
    bg = torch.rand(n, c, 1, 1, generator=gen)
    gap = 0.3 + 0.7 * torch.rand(n, 1, 1, 1, generator=gen)
    towards = torch.where(bg.mean(dim=1, keepdim=True) < 0.5, 1.0, -1.0)
    fg = (bg + towards * gap * torch.rand(n, c, 1, 1, generator=gen).clamp_min(0.5)).clamp(0.0, 1.0)
    return bg, fg


def randomise_appearance(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] with a random look each: kept (1/4), strokes and background in two
    random colours (1/4), strokes on a random coloured texture (1/4), or |texture - image| (1/4); then
    inverted with probability 1/4 and, for colour images, made grey with probability 1/5."""
    n, c, h, w = x.shape
    strokes = x.mean(dim=1, keepdim=True)  # (N, 1, H, W): the grey level, 1 on a stroke
    bg, fg = _random_colours(n, c, gen)
    cells = 3 + int(torch.randint(0, 5, (1,), generator=gen))
    tint = 0.3 + 0.7 * torch.rand(n, c, 1, 1, generator=gen)
    tex = value_noise((n, c, h, w), cells, gen) * tint
    looks = torch.stack(
        [x, bg * (1 - strokes) + fg * strokes, tex * (1 - strokes) + fg * strokes, (tex - x).abs()]
    )  # (4, N, C, H, W)
    pick = torch.randint(0, 4, (n,), generator=gen)
    out = looks[pick, torch.arange(n)]
    inverted = torch.rand(n, 1, 1, 1, generator=gen) < 0.25
    out = torch.where(inverted, 1.0 - out, out)
    if c == 3:
        grey = torch.rand(n, 1, 1, 1, generator=gen) < 0.2
        out = torch.where(grey, out.mean(dim=1, keepdim=True).expand_as(out), out)
    return out.clamp(0.0, 1.0)


def photometric_applies(setting: str, x: torch.Tensor) -> bool:
    """``teacher.photometric``: ``always`` (images) / ``never``, or ``auto``: colour images (N, 3, H, W)
    only, where the devices' looks can differ from the source's; grey and sensor tasks keep their recipe."""
    if setting == "auto":
        return x.dim() == 4 and x.shape[1] == 3
    return setting == "always" and x.dim() == 4
