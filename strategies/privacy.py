"""Client-level DP of the training rounds (``federation.privacy``): the server's side of the Gaussian
mechanism (``admp_privacy/dp.py``) and its accountant.

The accountant is Flower's ``RdpAccountant`` (``flwr.serverapp``, backed by Google's
``dp-accounting``). Central mode composes one sampled Gaussian release per aggregated training round:
k devices drawn without replacement from the N of the fleet (``strategies.base.FleetStrategy.sample``),
replace-one neighbours. Local mode composes, for the device that took part most often, one Gaussian
release per participation with no amplification (the server knows whom it asked). In both, one
device's clipped contribution moves the sum by at most 2 x clip when it is replaced, so the
accountant is given the noise multiplier z / 2 (noise std over that sensitivity): conservative.

Flower's own DP strategy wrappers and client mods do not fit these records: they clip one
ArrayRecord against the global arrays and refuse messages with several (ours carry weights, masks
and statistics), and their accounted mode requires FedAvg's aggregation with no sampling
amplification; the accountant and the maths are what is reused.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from flwr.app import MetricRecordValues
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

from admp.centroids import FeatureSums
from admp.masks import MaskDict
from admp_config.base import ConfigError
from admp_config.privacy import PrivacySpec
from admp_config.seeding import torch_generator
from admp_privacy.dp import (
    Parts,
    TensorDict,
    add_noise,
    clipped_contribution,
    mean_parts,
    plus,
    project_distribution,
    project_state,
    project_sums,
    released,
)
from strategies.selftraining import DeviceStats, SharedStats


def _accountant(mode: str, population: int, delta: float) -> RdpAccountant:
    """A fresh accountant for ``mode``'s release model over a fleet of ``population`` devices."""
    if mode == "central":
        model = (SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE)
    else:
        model = (SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE)
    config = PrivacyConfig(
        target_delta=delta, population_size=population, sampling_method=model[0], neighboring_relation=model[1]
    )
    return RdpAccountant(config)


def _event(z: float, sample: int, population: int) -> GaussianPrivacyEvent:
    """One release with noise multiplier ``z`` (per clip) over ``sample`` of ``population`` devices."""
    return GaussianPrivacyEvent(noise_multiplier=z / 2, sample_size=max(1, sample), population_size=population)


def epsilon_after(mode: str, z: float, rounds: int, sample: int, population: int, delta: float) -> float:
    """The epsilon at ``delta`` of ``rounds`` releases with multiplier ``z`` (0 releases: 0)."""
    if rounds <= 0:
        return 0.0
    accountant = _accountant(mode, population, delta)
    accountant.compose(_event(z, sample, population), rounds)
    return float(accountant.get_epsilon(delta))


def calibrate(mode: str, epsilon: float, rounds: int, sample: int, population: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.5 %) whose ``rounds`` releases spend at most ``epsilon``."""
    low, high = 0.01, 1.0
    while epsilon_after(mode, high, rounds, sample, population, delta) > epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise multiplier reaches epsilon {epsilon} over {rounds} rounds")
    while high / low > 1.005:
        mid = math.sqrt(low * high)
        if epsilon_after(mode, mid, rounds, sample, population, delta) > epsilon:
            low = mid
        else:
            high = mid
    return high


@dataclass
class Privacy:
    """The run's DP: its resolved settings, the releases so far and the budget they spent."""

    spec: PrivacySpec
    population: int  # N: devices of the fleet
    sample: int  # k: devices asked per training round
    planned_rounds: int  # training rounds of the run (the calibration's horizon)
    seed: int
    releases: int = 0  # aggregated training rounds (central)
    participations: dict[int, int] = field(default_factory=dict)  # device -> training rounds it was asked to (local)
    modules: list[str] | None = None  # the layers devices train (admp.trainable: norm); None: every weight
    z: float = field(init=False)  # the noise multiplier in force
    delta: float = field(init=False)  # the delta epsilon is reported at

    def __post_init__(self) -> None:
        """Resolve delta (0: 1/N) and z (given, or calibrated to ``target_epsilon`` over the planned rounds)."""
        if self.population < 2:
            raise ConfigError(f"federation.privacy: a fleet of {self.population} device has no one to hide among")
        self.delta = self.spec.delta or 1.0 / self.population
        try:
            self.z = self.spec.noise_multiplier or calibrate(
                self.spec.mode, self.spec.target_epsilon, self.planned_rounds, self.sample, self.population, self.delta
            )
        except ValueError as exc:
            raise ConfigError(f"federation.privacy.target_epsilon: {exc}") from exc

    @property
    def local(self) -> bool:
        """Whether devices noise their own contributions."""
        return self.spec.mode == "local"

    def epsilon(self, extra: int = 0) -> float:
        """The epsilon spent so far at ``delta`` (with ``extra`` more releases)."""
        count = (max(self.participations.values(), default=0) if self.local else self.releases) + extra
        return epsilon_after(self.spec.mode, self.z, count, self.sample, self.population, self.delta)

    def allows_round(self) -> bool:
        """False when one more training round would pass ``max_epsilon`` (0: no limit)."""
        limit = self.spec.max_epsilon
        return limit <= 0 or self.epsilon(extra=1) <= limit

    def device_config(self) -> dict[str, Any]:
        """What a training message tells a device in local mode (nothing in central mode)."""
        if not self.local:
            return {}
        modules = json.dumps(self.modules)  # null: every weight
        return {
            "privacy-clip": self.spec.clip,
            "privacy-z": self.z,
            "privacy-modules": modules,
        }

    def release(self, server_round: int, parts: list[Parts], reference: Parts) -> Parts:
        """The round's private aggregate: reference + the mean of the devices' differences, each device
        counted once. Central: each difference clipped here and N(0, (z clip)^2) added to their sum.
        Local: the devices already clipped and noised theirs (counted when asked): their plain mean."""
        if self.local:
            return mean_parts(parts)
        clipped = [clipped_contribution(p, reference, self.spec.clip) for p in parts]
        std = self.z * self.spec.clip / len(clipped)  # N(0, (z clip)^2) on the sum is this on the mean
        self.releases += 1
        return plus(reference, add_noise(mean_parts(clipped), std, self.generator(server_round)))

    def asked(self, devices: list[int]) -> None:
        """Local mode: each asked device releases a noised reply whether or not the round aggregates it."""
        if self.local:
            for device in devices:
                self.participations[device] = self.participations.get(device, 0) + 1

    def generator(self, server_round: int) -> torch.Generator:
        """The central noise's generator: from the root seed and round, or from the OS's entropy."""
        if self.spec.noise == "os":
            return torch.Generator().manual_seed(secrets.randbits(63))
        return torch_generator(self.seed, "privacy", server_round)

    def summary(self) -> dict[str, Any]:
        """What the run reports: mode, clip, z, delta, epsilon spent and the releases behind it."""
        return {
            "mode": self.spec.mode,
            "clip": self.spec.clip,
            "noise_multiplier": round(self.z, 4),
            "delta": self.delta,
            "epsilon": round(self.epsilon(), 4),
            "releases": max(self.participations.values(), default=0) if self.local else self.releases,
            "sampled": f"{self.sample} of {self.population}",
            "accountant": "RDP (flwr.serverapp.RdpAccountant, dp-accounting)",
        }

    def model(self) -> dict[str, Any]:
        """What the epsilon of the releases so far depends on besides their count."""
        return {
            "mode": self.spec.mode,
            "z": self.z,
            "population": self.population,
            "sample": self.sample,
            "delta": self.delta,
            "clip": self.spec.clip,
        }

    def state_dict(self) -> dict[str, Any]:
        """The releases so far and the model they were made under, for the run's checkpoint."""
        return {"releases": self.releases, "participations": dict(self.participations), "model": self.model()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s releases (a resumed run keeps counting its budget). ConfigError when
        the checkpoint's rounds were released without privacy or under another mode, z, fleet, sample,
        delta or clip: their epsilon would be misreported."""
        if state.get("model") != self.model():
            made = state.get("model") or "no privacy"
            raise ConfigError(
                f"federation.privacy: the checkpoint's rounds were released under {made}, not {self.model()}: "
                "resume with the settings it was started with"
            )
        self.releases = int(state.get("releases", 0))
        self.participations = {int(k): int(v) for k, v in dict(state.get("participations", {})).items()}


def stats_parts(stats: DeviceStats, n: int) -> Parts:
    """A device's self-training statistics as contribution parts, per sample (so each device's
    statistics are bounded whatever its size): the mean prediction, feature sums / n and masses / n."""
    parts: Parts = {}
    if stats.mean_prediction is not None:
        parts["marginal"] = {"p": stats.mean_prediction.float()}
    if stats.sums is not None:
        parts["centroids"] = {"sums": stats.sums.sums.float() / n, "mass": stats.sums.mass.float() / n}
    return parts


def stats_reference(like: DeviceStats, shared: SharedStats) -> Parts:
    """What the statistics' differences are taken from: the fleet's marginal last sent (uniform before
    one exists) and zero sums and masses."""
    ref: Parts = {}
    if like.mean_prediction is not None:
        k = len(like.mean_prediction)
        ref["marginal"] = {"p": shared.marginal.float() if shared.marginal is not None else torch.full((k,), 1 / k)}
    if like.sums is not None:
        ref["centroids"] = {"sums": torch.zeros_like(like.sums.sums), "mass": torch.zeros_like(like.sums.mass)}
    return ref


def stats_of(released: Parts) -> DeviceStats:
    """The fleet's statistics from a private aggregate, projected back to valid ranges."""
    out = DeviceStats()
    if "marginal" in released:
        out.mean_prediction = project_distribution(released["marginal"]["p"])
    if "centroids" in released:
        sums, mass = project_sums(released["centroids"]["sums"], released["centroids"]["mass"], 1.0)
        out.sums = FeatureSums(sums, mass)
    return out


class PrivateReply(Protocol):
    """What a validated training reply gives the private aggregate (``strategies.fedadmp.KdReply``)."""

    weights: TensorDict
    n: int
    stats: DeviceStats


def private_aggregate(
    privacy: Privacy,
    server_round: int,
    replies: Sequence[PrivateReply],
    sent: TensorDict,
    masks: dict[str, MaskDict],
    shared: SharedStats,
) -> tuple[TensorDict, dict[str, MaskDict], DeviceStats]:
    """One private training round: the new global weights (integer buffers as sent), the masks named in
    ``masks`` (each reply's attribute of that name, e.g. ``m`` and ``s``, against the global ones
    given) and the fleet's statistics, from ``privacy.release`` over every reply's parts."""
    reference: Parts = {"arrays": released(sent, privacy.modules)} | {name: dict(ref) for name, ref in masks.items()}
    reference |= stats_reference(replies[0].stats, shared)
    parts = [
        {"arrays": released(r.weights, privacy.modules)}
        | {name: getattr(r, name) for name in masks}
        | stats_parts(r.stats, r.n)
        for r in replies
    ]
    out = privacy.release(server_round, parts, reference)
    weights = dict(sent) | {k: v.to(sent[k].dtype) for k, v in project_state(out["arrays"]).items()}
    return weights, {name: out[name] for name in masks}, stats_of(out)


class PrivateFleet(Protocol):
    """What ``private_round`` reads of a strategy's fleet (``strategies.base.Fleet``)."""

    privacy: Privacy | None
    shared: SharedStats


class PrivateStrategy(Protocol):
    """What ``private_round`` needs of a strategy (``strategies.fedadmp.FedADMP`` / ``FedKD``)."""

    @property
    def fleet(self) -> PrivateFleet:
        """The strategy's fleet: its privacy accountant and shared statistics."""
        ...

    sent: TensorDict  # the global model last sent

    def share_stats(self, items: Sequence[tuple[DeviceStats, int]]) -> dict[str, MetricRecordValues]:
        """Make (stats, n) the fleet's aggregates; returns the label-free signals."""
        ...


def private_round(
    strategy: PrivateStrategy, server_round: int, replies: Sequence[PrivateReply], masks: dict[str, MaskDict]
) -> tuple[TensorDict, dict[str, MaskDict], dict[str, MetricRecordValues]]:
    """A training round under ``federation.privacy``: the weights, the named masks and the metrics of
    the fleet's statistics (now shared) and of the epsilon spent, from ``private_aggregate``."""
    privacy, shared = strategy.fleet.privacy, strategy.fleet.shared
    if privacy is None:
        raise ValueError("private_round needs federation.privacy")
    weights, new_masks, stats = private_aggregate(privacy, server_round, replies, strategy.sent, masks, shared)
    metrics: dict[str, MetricRecordValues] = {"epsilon": privacy.epsilon()}
    if stats.mean_prediction is not None or stats.sums is not None:
        metrics |= strategy.share_stats([(stats, sum(r.n for r in replies))])
    return weights, new_masks, metrics
