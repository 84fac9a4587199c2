"""The ``quantize`` section: integer weights for the exported model (ADMM quantization or PTQ)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from admp_config.base import Section, SectionError
from admp_config.choices import Dual

QuantMethod = Literal["admm", "ptq"]


class QuantizeSpec(Section):
    """Weight quantization of the exported student (``admp.quantize``, ``admp_export.integer``)."""

    bits: list[Annotated[int, Field(ge=2, le=8)]] = []  # bit-width of each stage, non-increasing, e.g.
    #   [8, 4] (progressive, as arXiv 1903.09769); the last is what the model ships with; []: float32 weights
    method: QuantMethod = "admm"  # admm: federated ADMM rounds (rounds_per_stage per stage) pull the weights
    #   onto the levels, then the final projection | ptq: the final projection of the exported weights only
    budget_bytes: Annotated[int, Field(ge=1)] | None = None  # mixed precision: each layer's bits (8, 4 or 2,
    #   not below the last stage) chosen by the fleet's sensitivity so the model's tensor bytes fit (admp/
    #   precision.py); None: every layer at the last stage's bits
    budget_reduction: Annotated[float, Field(gt=1)] | None = None  # the same budget as a factor: the dense
    #   float32 model's tensor bytes / this (e.g. 50: 50x fewer bytes); at most one of the two
    dual: Dual = "global"  # global: the server's U, stepped from the aggregated weights | per_client: each
    #   device keeps its own U_k between rounds and sends it; Z = proj(mean_k(W_k + U_k)) (consensus ADMM, as
    #   federation.dual does for the masks); not with privacy or secure aggregation (they see only sums)
    rounds_per_stage: Annotated[int, Field(ge=1)] = 3  # KD rounds of each ADMM stage (3: the fine-tune
    #   phase's default length); the penalty follows the masks' schedule (admp.rho, rho_gamma, rho_max)

    @model_validator(mode="after")
    def _stages(self) -> QuantizeSpec:
        """Bits step down (or stay) from one stage to the next."""
        if any(later > earlier for earlier, later in zip(self.bits, self.bits[1:], strict=False)):
            raise SectionError("bits", f"{self.bits} steps up; each stage starts from the last at no more bits")
        if self.budget_bytes is not None and self.budget_reduction is not None:
            raise SectionError("budget_reduction", "give {p}budget_bytes or {p}budget_reduction, not both")
        if self.dual == "per_client" and self.method != "admm":
            raise SectionError("dual", "per_client needs {p}method admm: ptq has no rounds to keep a dual through")
        if self.mixed and not self.bits:
            raise SectionError("budget_bytes", "needs {p}bits (the stages; the last is the lowest width a layer gets)")
        return self

    @property
    def mixed(self) -> bool:
        """Whether a size budget sets each layer's bits (mixed precision)."""
        return self.budget_bytes is not None or self.budget_reduction is not None

    @property
    def active(self) -> bool:
        """Whether the exported model stores integer weights."""
        return bool(self.bits)

    def admm_rounds(self) -> int:
        """Federated rounds of the quantization phase (0 for PTQ or none)."""
        return self.rounds_per_stage * len(self.bits) if self.active and self.method == "admm" else 0
