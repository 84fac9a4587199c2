"""Client-level differential privacy (``federation.privacy``): the Gaussian mechanism on what a device
contributes to each training round's aggregate. Pure tensor maths; the accountant is in
``strategies/privacy.py``.

A device's contribution to a round is a set of named *parts* (its weight update, mask updates, and
the self-training statistics it shares), each a difference from what the server last sent. Each of
the P parts is clipped to L2 norm ``clip / sqrt(P)``, so the whole contribution is at most ``clip``
long whatever its parts' scales; the Gaussian noise on every coordinate is ``noise_multiplier x
clip`` on the sum of contributions (central: the server adds it once; local: each device adds it to
its own contribution before sending).
"""

from __future__ import annotations

import math

import torch

TensorDict = dict[str, torch.Tensor]
Parts = dict[str, TensorDict]  # part name -> named tensors (only floating tensors take part)


def released(state: TensorDict, modules: list[str] | None) -> TensorDict:
    """The floating entries of a state dict that a private round releases: those of ``modules`` (the
    layers devices train, ``admp.trainable: norm``), or all (None). The others never change on a
    device, so they take no noise and stay as the server sent them."""
    names = set(modules) if modules is not None else None
    return {
        k: v for k, v in state.items() if v.is_floating_point() and (names is None or k.rpartition(".")[0] in names)
    }


def part_bound(clip: float, parts: int) -> float:
    """The L2 bound of each of ``parts`` parts, so that all of them together are at most ``clip``."""
    return clip / math.sqrt(max(parts, 1))


def l2_norm(tensors: TensorDict) -> float:
    """The L2 norm of all floating tensors of ``tensors`` taken as one vector."""
    squares = [float(t.double().pow(2).sum()) for t in tensors.values() if t.is_floating_point()]
    return math.sqrt(sum(squares))


def clip_part(delta: TensorDict, bound: float) -> TensorDict:
    """``delta`` scaled down to L2 norm ``bound`` when longer (floating tensors only; others dropped)."""
    norm = l2_norm(delta)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in delta.items() if v.is_floating_point()}


def clipped_contribution(parts: Parts, reference: Parts, clip: float) -> Parts:
    """Each part's difference from ``reference`` clipped to ``clip / sqrt(P)``: one device's
    contribution, at most ``clip`` long as a whole (the L2 sensitivity the noise is scaled to)."""
    bound = part_bound(clip, len(parts))
    return {
        name: clip_part({k: v.float() - reference[name][k].float() for k, v in part.items()}, bound)
        for name, part in parts.items()
    }


def add_noise(parts: Parts, std: float, generator: torch.Generator | None) -> Parts:
    """``parts`` plus i.i.d. N(0, std^2) on every coordinate (``generator`` None: the OS's entropy)."""
    out: Parts = {}
    for name, part in parts.items():
        out[name] = {}
        for key, value in part.items():
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float64)
            out[name][key] = (value.double() + std * noise).to(value.dtype)
    return out


def mean_parts(contributions: list[Parts]) -> Parts:
    """The coordinate-wise mean of the contributions (every device counts once: no example weights,
    which would let one device's claimed count scale its influence past the clip)."""
    if not contributions:
        raise ValueError("no contribution to average")
    first = contributions[0]
    return {
        name: {key: torch.stack([c[name][key] for c in contributions]).mean(dim=0) for key in part}
        for name, part in first.items()
    }


def plus(reference: Parts, delta: Parts) -> Parts:
    """``reference + delta`` part by part (the new aggregate from the averaged, noised differences)."""
    return {name: {k: reference[name][k].float() + v.float() for k, v in part.items()} for name, part in delta.items()}


def project_state(noised: TensorDict) -> TensorDict:
    """Noised weights made a valid state again: BatchNorm running variances no lower than 1e-5
    (post-processing, which keeps the guarantee)."""
    return {k: v.clamp_min(1e-5) if k.endswith("running_var") else v for k, v in noised.items()}


def project_distribution(p: torch.Tensor) -> torch.Tensor:
    """A noised mean prediction (K,) made a probability vector again."""
    p = p.clamp_min(0)
    return p / p.sum() if float(p.sum()) > 0 else torch.full_like(p, 1 / len(p))


def project_sums(sums: torch.Tensor, mass: torch.Tensor, total: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Noised per-class feature sums (K, D+1) and masses (K,) made valid again: masses >= 0 adding up
    to ``total``, no class sum longer than its mass (features are unit length)."""
    mass = project_distribution(mass) * total
    scale = (mass / sums.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return sums * scale.unsqueeze(1), mass
