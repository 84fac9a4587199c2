"""The ADMP state: hard mask m, soft mask s, ADMM auxiliary Z, dual U, penalty rho and its steps.

One object for every path: the centralized run steps it after each epoch, the FedADMP strategy
after each round (from the fleet's averaged m, or from mean_k(m_k + U_k) with per-client duals),
and a device builds one from the message it receives and trains against it. The steps live here
only; tests/admp/test_state.py checks that rounds through the strategy and the real ClientApp with one
device equal the same local training and steps applied to one state directly.

    Z = top-k_g(m + U)         U <- U + m - Z         rho <- min(gamma * rho, rho_max)

``rho == 0`` before the first Z-step (no penalty during the warm-up); ``rho0 == 0`` turns ADMM off
(plain L1 on m, and the merge keeps the top-k of m).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from admp import admm
from admp.masks import MaskDict, clone_masks, mask_sparsity, ones_masks, zeros_masks
from admp_config.sections import AdmpHyper

MASK_NAMES = ("m", "s", "z", "u")


@dataclass(frozen=True)
class AdmmSettings:
    """The ADMM knobs that the steps read (a subset of ``AdmpHyper``)."""

    prune_ratio: admm.Ratio  # p: share of channels removed per group at the merge (or one per group)
    rho0: float  # penalty after the first Z-step (0: no ADMM)
    rho_gamma: float  # rho <- min(rho_gamma * rho, rho_max) after every later Z-step
    rho_max: float
    prune_ramp: int = 0  # Z-steps over which the pruned share grows linearly to p
    z_frozen: bool = False  # Z keeps its start (the transplant of a given keep set); U still steps

    @classmethod
    def from_hyper(cls, hp: AdmpHyper) -> AdmmSettings:
        """The ADMM knobs of a run's ``admp`` section."""
        return cls(hp.ratio(), hp.rho, hp.rho_gamma, hp.rho_max, hp.prune_ramp, hp.z_frozen)


@dataclass
class AdmpState:
    """m, s, Z, U (one (C_g,) tensor per group), rho and the number of Z-steps taken."""

    settings: AdmmSettings
    m: MaskDict
    s: MaskDict
    z: MaskDict
    u: MaskDict
    rho: float = 0.0
    z_steps: int = 0

    @classmethod
    def initial(cls, settings: AdmmSettings, sizes: dict[str, int]) -> AdmpState:
        """m = s = Z = 1, U = 0, rho = 0 (no penalty until the first Z-step)."""
        return cls(settings, ones_masks(sizes), ones_masks(sizes), ones_masks(sizes), zeros_masks(sizes))

    @classmethod
    def warm_started(cls, settings: AdmmSettings, keep: MaskDict) -> AdmpState:
        """m = Z = ``keep`` (a binary keep set, ``admp.warmstart``), s = 1, U = 0 and rho = rho0: the
        student starts as the pruned model and the penalty holds m there from the first round."""
        sizes = {g: v.numel() for g, v in keep.items()}
        return cls(settings, clone_masks(keep), ones_masks(sizes), clone_masks(keep), zeros_masks(sizes), settings.rho0)

    @property
    def admm_on(self) -> bool:
        """False for the no-ADMM ablation (``rho0 == 0``)."""
        return self.settings.rho0 > 0

    def penalty(self, m: MaskDict) -> torch.Tensor:
        """(rho / 2) * sum_g ||m_g - Z_g + U_g||^2, differentiable in ``m``; 0 while rho is 0."""
        if self.rho <= 0:
            return torch.zeros(())
        return admm.admm_penalty(m, self.z, self.u, self.rho)

    def admm_step(self, consensus: MaskDict | None = None) -> None:
        """One Z-step, U-step and rho step from the current m.

        With ``consensus`` = mean_k(m_k + U_k) (per-client duals) Z is its top-k and the devices
        update their own duals (``advance_client_dual``); otherwise the global dual steps here.
        A no-op when ADMM is off.
        """
        if not self.admm_on:
            return
        self.z_steps += 1
        ratio = admm.ramped_ratio(self.settings.prune_ratio, self.z_steps, self.settings.prune_ramp)
        if consensus is None:
            if not self.settings.z_frozen:
                self.z = admm.z_step(self.m, self.u, ratio)
            self.u = admm.u_step(self.u, self.m, self.z)
        elif not self.settings.z_frozen:
            self.z = admm.z_step(consensus, zeros_masks({g: v.numel() for g, v in consensus.items()}), ratio)
        first = self.rho == 0
        new_rho = (
            self.settings.rho0 if first else admm.rho_next(self.rho, self.settings.rho_gamma, self.settings.rho_max)
        )
        self.u = admm.rescale_dual(self.u, self.rho, new_rho)
        self.rho = new_rho

    def advance_client_dual(self, last_m: MaskDict, last_rho: float) -> None:
        """A device's own dual after a new Z: U_k <- (U_k + m_k - Z) * last_rho / rho.

        ``last_m`` is the device's m_k when it last trained, under penalty ``last_rho``.
        """
        self.u = admm.rescale_dual(admm.u_step(self.u, last_m, self.z), last_rho, self.rho)

    def merge_mask(self) -> MaskDict:
        """The binary keep mask of the merge: a last projection of m + U at the full ratio p (Z itself
        when Z is frozen)."""
        if self.settings.z_frozen:
            return clone_masks(self.z)
        return admm.z_step(self.m, self.u, self.settings.prune_ratio)

    def metrics(self) -> dict[str, float]:
        """Sparsities, rho and the primal residual ||m - Z||: how close m is to a binary mask."""
        return {
            "soft-sparsity": mask_sparsity(self.m),
            "hard-sparsity": mask_sparsity(self.z),
            "rho": self.rho,
            "primal-residual": admm.primal_residual(self.m, self.z),
        }

    def state_dict(self) -> dict[str, object]:
        """Tensors and numbers only (checkpoints load with ``weights_only=True``)."""
        return {name: clone_masks(getattr(self, name)) for name in MASK_NAMES} | {
            "rho": self.rho,
            "z_steps": self.z_steps,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from ``state_dict()``; raises ``KeyError`` naming a missing entry."""
        for name in MASK_NAMES:
            masks = state[name]
            if not isinstance(masks, dict):
                raise TypeError(f"ADMP state entry {name!r} is not a mask dict")
            setattr(self, name, clone_masks(masks))
        self.rho = float(state["rho"])  # type: ignore[arg-type]
        self.z_steps = int(state["z_steps"])  # type: ignore[call-overload]
