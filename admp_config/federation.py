"""The ``federation`` section: rounds, sampling, aggregation, Ray, and the nested fleet-simulation,
privacy and secure-aggregation sections."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from admp_config.base import ConfigError, Section, SectionError
from admp_config.choices import (
    Aggregation,
    BnRecalibration,
    DeviceData,
    Dual,
    Strategy,
)
from admp_config.fleet import FaultSpec, ProfileSpec
from admp_config.privacy import PrivacySpec, SecureSpec


class RobustSpec(Section):
    """``federation.robust``: how replies and every fleet aggregate are bounded and combined
    (``strategies.robust``)."""

    aggregation: Aggregation = "auto"  # how replies and every fleet aggregate are combined (strategies/
    #   robust.py): mean = FedAvg | clip (updates clipped to clip_norm) | median | trimmed_mean (coordinate-
    #   wise, Yin et al. 2018) | auto: trimmed_mean, or mean under privacy or secure_aggregation (which need
    #   the mean); the rule of studies/aggregation.yaml, fixed before its runs, picks trimmed_mean
    trim_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.2  # trimmed_mean: share cut at each end per
    #   coordinate (int(share x replies) values: 0.2 cuts one of 5, the default clients per round)
    clip_norm: Annotated[float, Field(ge=0)] = 0.0  # clip: update norm bound; 0: the round's median update norm
    max_update_ratio: Annotated[float, Field(ge=0)] = 10.0  # a reply whose update is longer than this x the
    #   global model's norm is rejected (a replaced or boosted model); local rounds move far less; 0: off


class RaySpec(Section):
    """``federation.ray``: the simulation's Ray resources and SuperNode slots."""

    sim_nodes: Annotated[int, Field(ge=0)] = 0  # simulation SuperNodes the virtual devices run on (slots; a
    #   round's devices take distinct ones); 0: as many as one exchange asks (simulation_nodes)
    client_cpus: Annotated[float, Field(gt=0)] = 1.0  # Ray resources per virtual client
    num_cpus: Annotated[int, Field(ge=0)] = 0  # CPUs given to Ray (0: all)
    address: str = ""  # join an existing Ray cluster at this address ("" : start a local one)


class FederationSpec(Section):
    """Federated ADMP: fleet sampling, phases in rounds, duals, Ray resources.

    The fleet is the task's devices (``data.num_devices``, or one per subject), one virtual
    SuperNode each.
    """

    strategy: Strategy = "fedadmp"  # fedadmp | fedkd (no pruning) | naive (L1 prune on cloud, then fedkd) |
    #   fedtiny (FedTiny's adaptive-BN selection among L1 candidates on the devices, then fedkd; server.starts)
    fedtiny_candidates: Annotated[int, Field(ge=1)] = 8  # fedtiny: candidate keep sets the devices score
    clients_per_round: Annotated[int, Field(ge=1)] = 5
    teacher_rounds: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"  # rounds of the dense teacher's
    #   own federated self-training (IM + centroid pseudo labels, no KD) before any method starts from it;
    #   0: the teacher as trained on the source; auto: 3 (the fine-tune phase's default length) where the
    #   fleet shares one target domain, 0 where every device is a domain of its own (there, a FedAvg'd
    #   teacher trained without the KD anchor across domains drifted: digits, seed 0, 94.33 -> 93.22 %)
    weak_teacher_rounds: Annotated[int, Field(ge=0)] = 3  # where teacher_rounds gives none, the rounds a *weak*
    #   teacher self-trains (server.guards.weak_teacher: it keeps under half its source certainty on the fleet,
    #   label-free); distilling towards such a teacher holds every student near it. 0: off
    teacher_max_rounds: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"  # the teacher's self-training
    #   goes on past its rounds while it still climbs (server.guards.still_climbing: the label-free score
    #   falls by more than the keep margin per round), up to this many rounds in all; auto: mask_rounds
    mask_rounds: Annotated[int, Field(ge=0)] = 10  # rounds of the mask phase (warm-up included)
    warmup_rounds: Annotated[int, Field(ge=0)] = 2  # rounds without a Z-step; the first ends round warmup_rounds + 1
    finetune_rounds: Annotated[int, Field(ge=0)] = 3  # KD rounds of the physically pruned global model
    local_epochs: Annotated[int, Field(ge=1)] = 1  # local epochs per round on each client (at least; see below)
    min_local_steps: Annotated[int, Field(ge=0)] = 20  # rule fixed before any run: every sampled device takes
    #   >= 20 SGD steps per training round (more epochs on small devices), since HAPT devices with ~4 steps per
    #   round could not recover the divergence D that a Z-step adds (label-free, results/ablations); 0: off
    max_local_epochs: Annotated[int, Field(ge=0)] = 5  # the most passes over its data min_local_steps may make
    #   a device take per round (FedAvg's E = 5, McMahan et al. 2017); 0: no bound. Set after a small-fleet
    #   diagnosis (60 samples per device: 20 passes per round let local self-training drift; label-free
    #   reason: client drift grows with local epochs), not tuned: the one published value, no other tried
    dual: Dual = "global"  # global: server U from averaged m | per_client: U_k kept on each device
    eval_every: Annotated[int, Field(ge=1)] = 1  # federated evaluation every this many rounds (and always at the end)
    eval_clients: Annotated[int, Field(ge=0)] = 100  # devices asked to evaluate (and for BN statistics): a
    #   seeded sample of this many, every device of a fleet of at most this many; 0: every device, however many
    bn_recalibration: BnRecalibration = "auto"  # global: pool client BN moments into the exported model |
    #   local: global, and each device re-estimates BN statistics on its own unlabeled data before
    #   inference | none: keep the FedAvg'd statistics | auto: local when every device is a domain
    #   of its own (subjects, shifted devices), else global (see DataSpec.devices_are_domains)
    min_replies: Annotated[int, Field(ge=1)] = 1  # a round with fewer valid replies keeps the previous global state
    round_timeout: Annotated[float, Field(gt=0)] = 600.0  # seconds to wait for a round's replies
    stop_after_round: Annotated[int, Field(ge=0)] = 0  # pause after this round (0: run to the end); --resume goes on
    robust: RobustSpec = Field(default_factory=RobustSpec)  # reply bounds and the aggregation mode
    ray: RaySpec = Field(default_factory=RaySpec)  # Ray resources and simulation slots
    faults: FaultSpec = Field(default_factory=FaultSpec)  # injected faults, simulation only (admp_fleet/faults.py)
    profiles: ProfileSpec = Field(default_factory=ProfileSpec)  # device classes and the simulated fleet clock
    #   (admp_fleet/profiles.py): off while empty
    teacher_fallback: bool = True  # export the dense teacher when every pruned candidate's label-free score is
    #   worse than the teacher's by more than server.guards.FLAG_MARGIN (a collapsed run); false: the best
    #   pruned candidate ships anyway, flagged in the summary
    export_reference: bool = True  # with a kept self-trained teacher A and teacher_fallback: the chosen pruned
    #   candidate also gives way to A when it disagrees with A on more of the fleet's samples than the source
    #   teacher with target BN does, by more than server.guards.ADAPTED_MARGIN points
    #   (server.guards.reference_guard; the default by the condition written before its runs, docs/pruning.md)
    evaluate_labels: bool = True  # false: no device reads its labels (a deployment without them); runs report
    #   the label-free figures only, and no accuracy
    secure_aggregation: SecureSpec = Field(default_factory=SecureSpec)  # SecAgg+ over the training rounds
    #   (admp_config/privacy.py): off by default
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)  # client-level DP of the training rounds
    #   (admp_privacy/dp.py, strategies/privacy.py): off by default
    device_data: DeviceData = "scenario"  # scenario: each device's data is its partition of the scenario (the
    #   server knows its size and bounds every claimed count by it) | own: real devices bring their own data
    #   (node config data-path); the bound is then 10 x the round's median claim

    def check_fleet(self, num_devices: int) -> None:
        """Settings that need the fleet's size, known once the data is read (ConfigError naming the key)."""
        for key, value in (
            ("clients_per_round", self.clients_per_round),
            ("min_replies", self.min_replies),
            ("ray.sim_nodes", self.ray.sim_nodes),
        ):
            if value > num_devices:
                raise ConfigError(f"federation.{key}: {value} exceeds the fleet's {num_devices} devices")
        needed = self.most_asked(num_devices)
        if 0 < self.ray.sim_nodes < needed:
            raise ConfigError(
                f"federation.ray.sim_nodes: {self.ray.sim_nodes} nodes cannot run the {needed} devices one exchange "
                "asks (clients_per_round with over-selection, eval_clients)"
            )
        outside = [d for d in self.faults.hostile_devices if d >= num_devices]
        if outside:
            raise ConfigError(f"federation.faults.hostile_devices: {outside} are not in a fleet of {num_devices}")

    def most_asked(self, num_devices: int) -> int:
        """The most devices one exchange asks in a fleet of ``num_devices``: a training round's sample
        (over-selection included) or an evaluation's (``eval_clients``, 0: all)."""
        train = math.ceil(self.clients_per_round * (1 + self.profiles.over_selection))
        evaluation = self.eval_clients or num_devices
        return min(num_devices, max(train, evaluation))

    def simulation_nodes(self, num_devices: int) -> int:
        """SuperNodes a simulation starts for ``num_devices`` virtual devices: ``ray.sim_nodes``, else as many as
        one exchange asks, so start-up and rounds do not grow with the fleet (``strategies.roster``)."""
        return self.ray.sim_nodes or self.most_asked(num_devices)

    def teacher_round_cap(self) -> int:
        """The most rounds the teacher's self-training may take (``teacher_max_rounds``; auto: mask_rounds)."""
        return self.mask_rounds if self.teacher_max_rounds == "auto" else self.teacher_max_rounds

    def self_training_rounds(self) -> int:
        """``teacher_rounds`` as resolved for the run's fleet (``auto`` is resolved with the scenario)."""
        if self.teacher_rounds == "auto":
            raise ConfigError("federation.teacher_rounds: 'auto' is resolved with the whole scenario config")
        return self.teacher_rounds

    @model_validator(mode="after")
    def _consistent(self) -> FederationSpec:
        """Settings under which rounds would run but could never do their job (``robust.aggregation: auto``
        is resolved first: DP noise and SecAgg+'s sum are calibrated to the mean)."""
        if self.robust.aggregation == "auto":
            needs_mean = self.privacy.active or self.secure_aggregation.enabled
            self.robust.aggregation = "mean" if needs_mean else "trimmed_mean"
        if self.min_replies > self.clients_per_round:
            raise SectionError(
                "min_replies",
                f"{self.min_replies} exceeds {{p}}clients_per_round "
                f"({self.clients_per_round}): every round would be discarded",
            )
        if self.strategy == "fedadmp" and self.mask_rounds > 0 and self.warmup_rounds >= self.mask_rounds:
            raise SectionError(
                "warmup_rounds",
                f"{self.warmup_rounds} is not below {{p}}mask_rounds ({self.mask_rounds}): the first Z-step "
                "ends round warmup_rounds + 1, so none would run",
            )
        if self.privacy.active and (self.profiles.availability != "always" or self.profiles.over_selection > 0):
            raise SectionError(
                "privacy",
                "with {p}profiles.availability other than always or {p}profiles.over_selection the rounds sample "
                "more than k of N devices, which the accountant would under-count",
            )
        if self.privacy.active and (self.robust.aggregation != "mean" or self.dual != "global"):
            raise SectionError(
                "privacy",
                f"needs {{p}}robust.aggregation mean and {{p}}dual global (got {self.robust.aggregation}, "
                f"{self.dual}): the noise is calibrated to the mean of clipped contributions, and per-client "
                "duals would leave the devices unclipped",
            )
        if self.secure_aggregation.enabled:
            self._check_secure()
        return self

    def _check_secure(self) -> None:
        """What secure aggregation cannot do: see single replies (robust aggregation, per-client duals,
        server-side clipping for DP, the clock's per-reply timing, injected corruptions) or sum fewer than 2."""
        clash = {
            "robust.aggregation": (self.robust.aggregation != "mean", self.robust.aggregation),
            "dual": (self.dual != "global", self.dual),
            "privacy": (self.privacy.active, self.privacy),
            "profiles": (self.profiles.active, self.profiles),
            "faults": (self.faults.active, self.faults),
            "clients_per_round": (self.clients_per_round < 2, self.clients_per_round),
        }
        for key, (bad, value) in clash.items():
            if bad:
                raise SectionError(
                    "secure_aggregation",
                    f"cannot be combined with {{p}}{key} = {value!r}: the server sees only the sum of "
                    "at least 2 replies (needs mean aggregation, the global dual, no privacy, profiles or faults)",
                )
