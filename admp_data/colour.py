"""Colour and texture shifts for images (N, C, H, W) in [0, 1]: what a new camera, a coloured
housing or a cluttered background does to a device's data. Severity 1 (mild) .. 5 (strong).

Every random choice comes from the device's ``torch.Generator``, so a device keeps one look
(its colours, its texture's orientation and scale) over all its images; a texture's phase
varies per image. ``colour`` and ``channel_swap`` are for RGB (``data.rgb``); ``texture``, ``blend``
and ``invert`` apply to grey images too.
"""

from __future__ import annotations

import itertools
import math

import torch


def _stroke_weight(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1]: how far each pixel is from its image's background colour (the median
    of the border pixels per channel), scaled so the strongest stroke pixel is 1."""
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # (N, C, 2H+2W)
    background = border.median(dim=-1).values[..., None, None]  # (N, C, 1, 1)
    distance = (x - background).abs().amax(dim=1, keepdim=True)  # (N, 1, H, W)
    return distance / distance.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def colour(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Strokes and background painted in the device's two colours: out = bg (1 - g) + fg g, with g
    the grey level. The colours' contrast per channel shrinks with severity."""
    c = x.shape[1]
    bg = torch.rand(c, generator=gen)
    contrast = (1.0 - 0.12 * severity) * (0.6 + 0.4 * torch.rand(c, generator=gen))
    fg = torch.where(bg < 0.5, bg + contrast * (1 - bg), bg * (1 - contrast))  # towards the far end
    grey = x.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    return bg.view(1, c, 1, 1) * (1 - grey) + fg.view(1, c, 1, 1) * grey


def _grating(shape: tuple[int, int, int], severity: int, gen: torch.Generator) -> torch.Tensor:
    """(N, H, W) in [0, 1]: two crossed sinusoidal gratings at the device's orientation and scale,
    each image at its own phase."""
    n, h, w = shape
    theta = float(torch.rand(1, generator=gen)) * math.pi
    cycles = 2.0 + severity * (1.0 + float(torch.rand(1, generator=gen)))  # cycles across the image
    v, u = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    along = u * math.cos(theta) + v * math.sin(theta)
    across = -u * math.sin(theta) + v * math.cos(theta)
    phase = 2 * math.pi * torch.rand(n, 2, generator=gen)
    a = torch.sin(2 * math.pi * cycles * along + phase[:, :1, None])  # (N, H, W)
    b = torch.sin(math.pi * cycles * across + phase[:, 1:, None])
    return 0.5 + 0.25 * (a + b)


def texture(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """A procedural texture in the device's colour blended into the background with weight
    0.15 * severity; stroke pixels (g = 1) keep their value."""
    n, c, h, w = x.shape
    tint = 0.5 + 0.5 * torch.rand(c, generator=gen)
    pattern = _grating((n, h, w), severity, gen).unsqueeze(1) * tint.view(1, c, 1, 1)  # (N, C, H, W)
    blend = 0.15 * severity * (1 - _stroke_weight(x))  # (N, 1, H, W)
    return x * (1 - blend) + pattern * blend


def value_noise(shape: tuple[int, int, int, int], cells: int, gen: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) in [0, 1]: smooth random texture, a ``cells`` x ``cells`` grid of uniform values per
    image and channel, upsampled bicubically (value noise), plus half as much at twice the frequency."""
    n, c, h, w = shape
    coarse = torch.rand(n, c, cells, cells, generator=gen)
    fine = torch.rand(n, c, 2 * cells, 2 * cells, generator=gen)
    up = torch.nn.functional.interpolate
    out = up(coarse, size=(h, w), mode="bicubic", align_corners=False)
    out = out + 0.5 * up(fine, size=(h, w), mode="bicubic", align_corners=False)
    low = out.amin(dim=(2, 3), keepdim=True)
    return (out - low) / (out.amax(dim=(2, 3), keepdim=True) - low).clamp_min(1e-6)


def blend(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """MNIST-M's recipe (Ganin & Lempitsky 2015) with procedural textures instead of photo patches:
    out = |texture - x|, the texture coloured value noise in the device's palette (its own per image),
    its contrast growing with severity. Dark strokes on light texture become light, and so on."""
    n, c, h, w = x.shape
    base = torch.rand(c, generator=gen).view(1, c, 1, 1)
    spread = 0.2 + 0.15 * severity
    cells = 3 + int(torch.randint(0, 4, (1,), generator=gen))
    tex = (base + spread * (value_noise((n, c, h, w), cells, gen) - 0.5)).clamp(0.0, 1.0)
    return (tex - x).abs()


def invert(x: torch.Tensor) -> torch.Tensor:
    """Negative image: dark strokes on a light background."""
    return 1.0 - x


def channel_swap(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The device's fixed non-identity permutation of the three colour channels (BGR-like sensors)."""
    if x.shape[1] != 3:
        raise ValueError(f"channel_swap needs 3-channel images (data.rgb: true), got {x.shape[1]} channel(s)")
    perms = [p for p in itertools.permutations(range(3)) if p != (0, 1, 2)]
    return x[:, list(perms[int(torch.randint(len(perms), (1,), generator=gen))])]


def colour_shift(x: torch.Tensor, name: str, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Apply the colour shift ``name``; output in [0, 1], same shape."""
    if name == "colour":
        out = colour(x, severity, gen)
    elif name == "texture":
        out = texture(x, severity, gen)
    elif name == "blend":
        out = blend(x, severity, gen)
    elif name == "invert":
        out = invert(x)
    elif name == "channel_swap":
        out = channel_swap(x, gen)
    else:
        raise ValueError(f"{name!r} is not a colour shift")
    return out.clamp(0.0, 1.0)
