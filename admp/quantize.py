"""ADMM weight quantization: the per-channel b-bit projection, its Z/U steps and the progressive stages.

Quantization is one more constraint set handled by ADMM (Ye et al., "Progressive DNN Compression ...
with ADMM", arXiv 1903.09769): each quantized weight tensor W has an auxiliary Z on b-bit levels and a
scaled dual U,

    Z = proj_b(W + U)        U <- U + W - Z        rho <- min(gamma * rho, rho_max)

and local training adds (rho / 2) * ||W - Z + U||^2, which pulls W towards the levels while the loss
keeps what matters. Bits step down over stages (8 -> 4 -> 2), each stage starting from the last one's
weights; the run ends with W = proj_b(W), so the exported integer model computes exactly what was
evaluated.

The levels: symmetric, per output channel c (dim 0 of a Conv or Linear weight), {-q, ..., q} * s_c
with q = 2^(b-1) - 1 (b = 2: ternary). s_c is the one of ``max|W_c| * a / q`` (a in ``CLIP_FACTORS``)
whose rounding error is smallest: a < 1 clips the largest weights, which pays at low bits. Every
projected channel holds a weight at +-q * s_c, so an exporter recovers s_c from the weights alone
(``channel_codes``), also after BatchNorm is folded into them (a per-channel factor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from admp import admm

TensorDict = dict[str, torch.Tensor]
MIN_BITS, MAX_BITS = 2, 8
CLIP_FACTORS = tuple(1.0 - 0.05 * i for i in range(11))  # 1.0 (max-abs) down to 0.5 of the largest weight


def level_count(bits: int) -> int:
    """q = 2^(b-1) - 1: the largest integer level of a symmetric b-bit code."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return int(2 ** (bits - 1) - 1)


def stored_bits(bits: int) -> int:
    """The integer type a b-bit code is stored in (admp_export.integer): int2, int4 or int8."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def channel_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (same shape as ``w``, in [-q, q]) and per-channel scales (C,) of the b-bit
    projection; ties between clip factors go to the first (max-abs), so a tensor already on its levels
    keeps them (the projection is idempotent)."""
    q = level_count(bits)
    flat = w.detach().reshape(w.shape[0], -1).to(torch.float64)
    amax = flat.abs().amax(dim=1)
    factors = torch.tensor(CLIP_FACTORS, dtype=torch.float64)
    scales = amax[None, :] * factors[:, None] / q  # (A, C)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero channel stays zero
    codes = torch.clamp(torch.round(flat[None] / scales[..., None]), -q, q)  # (A, C, K)
    errors = ((codes * scales[..., None] - flat[None]) ** 2).sum(dim=2)  # (A, C)
    best = errors.argmin(dim=0)  # first minimum: max-abs on ties
    pick = torch.arange(flat.shape[0])
    chosen_codes, chosen_scales = codes[best, pick], scales[best, pick]
    return chosen_codes.reshape(w.shape), chosen_scales.to(torch.float32)


def project(w: torch.Tensor, bits: int) -> torch.Tensor:
    """proj_b(w): the nearest b-bit per-channel levels (see ``channel_codes``), dtype of ``w``."""
    codes, scales = channel_codes(w, bits)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (codes.to(torch.float32) * scales.reshape(shape)).to(w.dtype)


def quantized_weights(model: nn.Module) -> list[str]:
    """The state-dict names of every Conv and Linear weight: what is quantized (biases, BatchNorm and
    the input normalisation stay float32; BatchNorm folds into the weights at export)."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Linear)
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, kinds)]


def project_weights(state: TensorDict, bits: dict[str, int]) -> TensorDict:
    """A copy of ``state`` with every tensor named in ``bits`` projected onto its b-bit levels."""
    return {k: project(v, bits[k]) if k in bits else v.clone() for k, v in state.items()}


def weight_penalty(model: nn.Module, targets: TensorDict, rho: float) -> torch.Tensor:
    """(rho / 2) * sum ||W - T||^2 over the named weights, with T = Z - U (what a device pulls towards);
    differentiable in the model's weights."""
    params = dict(model.named_parameters())
    terms = [((params[name] - t) ** 2).sum() for name, t in targets.items()]
    if rho <= 0 or not terms:
        return torch.zeros(())
    return 0.5 * rho * sum(terms[1:], terms[0])


def stage_bits(stages: tuple[int, ...], final: dict[str, int], stage: int) -> dict[str, int]:
    """Each layer's bits in ``stage``: the stage's bit-width, never below the layer's final one (a layer
    that a budget keeps at 8 bits is not taken lower on the way)."""
    return {name: max(stages[stage], b) for name, b in final.items()}


@dataclass(frozen=True)
class QuantSettings:
    """The quantization schedule: bits per stage (non-increasing), rounds per stage, the penalty."""

    stages: tuple[int, ...]
    rounds_per_stage: int
    rho0: float
    rho_gamma: float
    rho_max: float

    def stage_of(self, round_index: int) -> int:
        """The stage of the phase's ``round_index``-th round (0-based)."""
        return min(round_index // self.rounds_per_stage, len(self.stages) - 1)

    @property
    def rounds(self) -> int:
        """Rounds of the whole quantization phase."""
        return self.rounds_per_stage * len(self.stages)


@dataclass
class QuantState:
    """Z, U (one tensor per quantized weight), rho, the stage, and the final bits of every layer."""

    settings: QuantSettings
    final_bits: dict[str, int]
    z: TensorDict = field(default_factory=dict)
    u: TensorDict = field(default_factory=dict)
    rho: float = 0.0
    stage: int = -1  # -1: no stage started yet
    steps: int = 0  # Z-steps of the current stage: a device with its own dual advances it on a new one

    def bits(self) -> dict[str, int]:
        """Every layer's bits in the current stage."""
        return stage_bits(self.settings.stages, self.final_bits, max(self.stage, 0))

    def start_stage(self, weights: TensorDict, stage: int) -> None:
        """A new ADMM problem from the current weights: Z = proj(W) at the stage's bits, U = 0, rho = rho0."""
        self.stage = stage
        bits = self.bits()
        self.z = {k: project(weights[k], b) for k, b in bits.items()}
        self.u = {k: torch.zeros_like(v) for k, v in self.z.items()}
        self.rho, self.steps = self.settings.rho0, 0

    def step(self, weights: TensorDict) -> None:
        """Z = proj(W + U), U <- U + W - Z, then rho grows, the unscaled dual rho * U kept (Boyd et al. 3.4.1)."""
        bits = self.bits()
        self.z = {k: project(weights[k].detach() + self.u[k], b) for k, b in bits.items()}
        self.u = admm.u_step(self.u, weights, self.z)
        new_rho = admm.rho_next(self.rho, self.settings.rho_gamma, self.settings.rho_max)
        self.u, self.rho = admm.rescale_dual(self.u, self.rho, new_rho), new_rho
        self.steps += 1

    def step_consensus(self, consensus: TensorDict) -> None:
        """Per-client duals (consensus ADMM): Z = proj(mean_k(W_k + U_k)), the devices step their own U_k
        (``advance_dual``) and the server's U stays zero, so the targets it sends are Z; then rho grows."""
        self.z = {k: project(consensus[k].detach(), b) for k, b in self.bits().items()}
        self.rho = admm.rho_next(self.rho, self.settings.rho_gamma, self.settings.rho_max)
        self.steps += 1

    def targets(self) -> TensorDict:
        """T = Z - U: the penalty (rho / 2) * ||W - T||^2 is all a device needs."""
        return {k: self.z[k] - self.u[k] for k in self.z}

    def residual(self, weights: TensorDict) -> float:
        """||W - Z|| over every quantized weight, relative to ||W||: how far W still is from its levels."""
        num = sum(float(((weights[k] - self.z[k]) ** 2).sum()) for k in self.z)
        den = sum(float((weights[k] ** 2).sum()) for k in self.z)
        return (num / den) ** 0.5 if den else 0.0

    def state_dict(self) -> dict[str, object]:
        """Tensors and numbers only (checkpoints load with ``weights_only=True``)."""
        return {"z": dict(self.z), "u": dict(self.u), "rho": self.rho, "stage": self.stage, "steps": self.steps}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from ``state_dict()``."""
        z, u = state["z"], state["u"]
        if not isinstance(z, dict) or not isinstance(u, dict):
            raise TypeError("quantization state: z and u must be tensor dicts")
        self.z, self.u = dict(z), dict(u)
        self.rho, self.stage = float(state["rho"]), int(state["stage"])  # type: ignore[arg-type, call-overload]
        self.steps = int(state.get("steps", 0))  # type: ignore[call-overload]


def advance_dual(u: TensorDict, last_w: TensorDict, z: TensorDict, last_rho: float, rho: float) -> TensorDict:
    """A device's own dual after a new Z: U_k <- (U_k + W_k - Z) * last_rho / rho, ``last_w`` its weights
    when it last trained, under penalty ``last_rho`` (the masks' per-client rule, on the weights)."""
    return admm.rescale_dual(admm.u_step(u, last_w, z), last_rho, rho)
