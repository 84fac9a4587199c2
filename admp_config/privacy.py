"""The privacy sections (``federation.privacy``: client-level DP; ``federation.secure_aggregation``:
Flower's SecAgg+ over the training rounds). The mechanisms are ``admp_privacy.dp``,
``strategies/privacy.py`` and ``strategies/secure.py``, ``server/secure.py``, ``clients/secure.py``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from admp_config.base import Section, SectionError


class PrivacySpec(Section):
    """Client-level DP of the training rounds; off by default.

    ``central``: the server clips each reply's contribution and adds Gaussian noise to their sum
    (it sees clipped but un-noised replies: trust in the server's code). ``local``: each device clips
    and noises its released weights, masks and statistics before they leave (the same epsilon then
    costs far more noise in the average). Outside the guarantee in both: evaluation replies and the
    training metrics (example counts, divergence, loss, epochs, handler time; docs/privacy.md).
    """

    mode: Literal["off", "central", "local"] = "off"
    clip: Annotated[float, Field(gt=0)] = 1.0  # L2 bound of one device's whole contribution to a round
    noise_multiplier: Annotated[float, Field(ge=0)] = 0.0  # z: noise std = z x clip on the sum
    target_epsilon: Annotated[float, Field(ge=0)] = 0.0  # > 0: z calibrated so that every planned training
    #   round together spends this epsilon at delta (replaces noise_multiplier)
    delta: Annotated[float, Field(ge=0, lt=1)] = 0.0  # 0: 1 / (number of devices)
    max_epsilon: Annotated[float, Field(ge=0)] = 0.0  # > 0: training stops before a round would pass it
    noise: Literal["seeded", "os"] = "seeded"  # central mode's noise and each round's sample: seeded from the
    #   root seed, for simulation studies only (every device gets the root seed, so any of them could remove
    #   the noise) | os: from the server's operating system (every deployment). Local mode's noise is always
    #   the device's own (OS entropy): the server must not know it

    @field_validator("mode", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        """YAML reads a bare ``off`` as false: that is ``off``."""
        return "off" if value is False else value

    @property
    def active(self) -> bool:
        """Whether training rounds are privatised."""
        return self.mode != "off"

    @model_validator(mode="after")
    def _consistent(self) -> PrivacySpec:
        """A private run needs noise: a multiplier or an epsilon to calibrate one, not both."""
        if self.active and (self.noise_multiplier > 0) == (self.target_epsilon > 0):
            raise SectionError("noise_multiplier", "set exactly one of {p}noise_multiplier and {p}target_epsilon")
        return self


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
