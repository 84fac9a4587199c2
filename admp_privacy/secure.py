"""Settings of secure aggregation (``federation.secure_aggregation``): Flower's SecAgg+ over the training
rounds, so the server learns only the example-weighted mean of what the sampled devices send
(``strategies/secure.py``, ``server/secure.py``, ``clients/secure.py``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from admp_config.base import Section, SectionError


class SecureSpec(Section):
    """SecAgg+ (Bell et al. 2020) as Flower implements it; off by default."""

    enabled: bool = False
    num_shares: Annotated[int, Field(ge=2)] = 3  # each device's secrets go to this many neighbours (Flower's
    #   example value; the sample size, or more, makes it SecAgg: every pair)
    threshold: Annotated[int, Field(ge=2)] = 2  # shares that rebuild a secret: a round survives dropouts while
    #   every device keeps this many live neighbours
    clipping_range: Annotated[float, Field(gt=0)] = 8.0  # every summed value is clipped to +-this (Flower's
    #   default); updates, masks and per-sample statistics stay well inside
    max_weight: Annotated[float, Field(ge=0)] = 0.0  # the largest example count a device weighs in with
    #   (Flower quantizes n / max_weight: above 1 the sum may overflow, far below 1 it loses precision);
    #   0: the largest training split among the round's devices where the server knows it, else 1,000

    @model_validator(mode="after")
    def _shares(self) -> SecureSpec:
        if self.threshold > self.num_shares:
            raise SectionError("threshold", f"{self.threshold} exceeds {{p}}num_shares ({self.num_shares})")
        return self
