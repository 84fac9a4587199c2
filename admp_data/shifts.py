"""IoT-style domain shifts with a severity (1 = mild .. 5 = strong).

Image shifts act on float tensors (N, C, H, W) in [0, 1]; sensor shifts act on standardised
windows (N, C, T). Every random choice comes from the ``torch.Generator`` passed in, so a device's
domain is a pure function of the run seed and the device id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from admp_config.choices import COLOUR_SHIFTS, SHIFT_KINDS
from admp_data.colour import colour_shift


@dataclass(frozen=True)
class ShiftSpec:
    """One shift and its severity in 1..5."""

    name: str
    severity: int = 3

    def __post_init__(self) -> None:
        if self.name not in SHIFT_KINDS:
            raise ValueError(f"unknown shift {self.name!r}; known: {', '.join(SHIFT_KINDS)}")
        if not 1 <= int(self.severity) <= 5:
            raise ValueError(f"shift {self.name!r}: severity must be 1..5, got {self.severity}")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    kx = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), ky, groups=c)


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its own angle (degrees: (N,)), zero fill."""
    rad = degrees * math.pi / 180.0
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def shift_images(x: torch.Tensor, spec: ShiftSpec, gen: torch.Generator) -> torch.Tensor:
    """Apply one image shift: (N, C, H, W) in [0,1] -> same shape in [0,1]."""
    s = int(spec.severity)
    if spec.name in COLOUR_SHIFTS:
        return colour_shift(x, spec.name, s, gen)
    if spec.name == "noise":  # sensor read noise
        x = x + 0.06 * s * torch.randn(x.shape, generator=gen)
    elif spec.name == "blur":  # out-of-focus lens
        x = _gaussian_blur(x, sigma=0.35 * s)
    elif spec.name == "contrast":  # exposure: lower contrast, brighter background
        x = (x - 0.5) * (1.0 - 0.13 * s) + 0.5 + 0.05 * s
    elif spec.name == "rotation":  # a camera mounted at a tilt, plus jitter
        sign = 1.0 if float(torch.rand(1, generator=gen)) < 0.5 else -1.0
        jitter = (torch.rand(x.shape[0], generator=gen) - 0.5) * 4.0 * s
        x = _rotate(x, sign * 7.0 * s + jitter)
    elif spec.name == "lowres":  # a cheaper sensor: downsample then upsample
        h, w = x.shape[-2:]
        size = (max(4, round(h / (1 + 0.4 * s))), max(4, round(w / (1 + 0.4 * s))))
        x = F.interpolate(F.interpolate(x, size=size, mode="area"), size=(h, w), mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"shift {spec.name!r} does not apply to images")
    return x.clamp(0.0, 1.0)


def shift_sensor(x: torch.Tensor, spec: ShiftSpec, gen: torch.Generator) -> torch.Tensor:
    """Apply one sensor shift to standardised windows (N, C, T)."""
    s = int(spec.severity)
    c = x.shape[1]
    if spec.name == "noise":  # noisier IMU
        return x + 0.1 * s * torch.randn(x.shape, generator=gen)
    if spec.name == "gain":  # per-axis calibration error, fixed for the device
        return x * (1.0 + 0.08 * s * (2 * torch.rand(1, c, 1, generator=gen) - 1))
    if spec.name == "offset":  # per-axis bias, fixed for the device
        return x + 0.1 * s * (2 * torch.rand(1, c, 1, generator=gen) - 1)
    raise ValueError(f"shift {spec.name!r} does not apply to sensor windows")


def apply_shift_mix(x: torch.Tensor, mix: list[ShiftSpec], gen: torch.Generator) -> torch.Tensor:
    """Compose the shifts of one device's mix, in order; images if x is 4-D, sensors if 3-D."""
    fn = shift_images if x.dim() == 4 else shift_sensor
    for spec in mix:
        x = fn(x, spec, gen)
    return x


def random_shift_mix(
    gen: torch.Generator, kinds: tuple[str, ...], max_shifts: int = 2, severity_range: tuple[int, int] = (2, 4)
) -> list[ShiftSpec]:
    """A device's own mix: 1..max_shifts distinct shifts with random severities."""
    n = 1 + int(torch.randint(max_shifts, (1,), generator=gen))
    order = torch.randperm(len(kinds), generator=gen)[:n].tolist()
    lo, hi = severity_range
    return [ShiftSpec(kinds[i], int(torch.randint(lo, hi + 1, (1,), generator=gen))) for i in order]
