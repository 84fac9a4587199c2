"""YAML configuration validated into typed pydantic models.

Every key is checked where it is declared: an unknown key, a wrong type, a value out of its
``Field`` range or outside its choice list (``admp.choices``) raises ``ConfigError`` naming the full
dotted key (e.g. ``admp.prune_ratio``). Defaults are the field defaults, and a run writes the fully
resolved config next to its results.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import Field, model_validator

from admp.choices import (
    FACTORY_PATH,
    Aggregation,
    ArchChoice,
    BnRecalibration,
    CentroidScope,
    Dataset,
    DeviceData,
    Dual,
    ImageMode,
    ImMarginal,
    KeepInit,
    MergeRecovery,
    Partition,
    Photometric,
    PseudoLabels,
    ScheduleBudget,
    ShiftKind,
    ShiftsMode,
    Strategy,
    TeacherBn,
    UspsLayout,
)
from admp.configbase import ConfigError, Section, SectionError, parse_section
from admp.faults import FaultSpec
from admp.privacy import PrivacySpec
from admp.profiles import ProfileSpec
from admp.secure import SecureSpec

__all__ = [
    "AdmpHyper",
    "ConfigError",
    "DataSpec",
    "FederationSpec",
    "ModelSpec",
    "RunSpec",
    "ScenarioConfig",
    "ScheduleSpec",
    "TeacherSpec",
    "apply_overrides",
    "config_from_overrides",
    "load_config",
    "parse_section",
    "resolve_bn_modes",
    "to_yaml",
]


class RunSpec(Section):
    """Run identity and reproducibility."""

    name: str = "run"  # run directory prefix
    seed: int = 0  # the root seed: partitions, shifts, init and sampling derive from it
    out_dir: str = "runs"  # parent folder of run directories
    threads: Annotated[int, Field(ge=0)] = 0  # torch CPU threads (0: torch's default)
    tensorboard: bool = False  # also log every per-round metric to <run dir>/tensorboard (the tracking extra)

    @model_validator(mode="after")
    def _tracker_installed(self) -> RunSpec:
        """A TensorBoard log needs the ``tensorboard`` package: say so before anything is trained."""
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise SectionError("tensorboard", "needs the tensorboard package (pip install 'fedadmp[tracking]')")
        return self


class DataSpec(Section):
    """What data a run uses and how the target fleet is made (documented defaults)."""

    dataset: Dataset = "digits"
    data_dir: str = ""  # folder holding mnist/, usps/, hapt/ npz files, or the image-folder root
    path: str = ""  # npz: the user's file (x_source, y_source, x_target, ...; admp.data.npz, docs/data.md)
    source_domain: str = ""  # imagefolder: source domain folder name
    target_domain: str = ""  # imagefolder: target domain folder name
    image_size: Annotated[int, Field(ge=8, le=512)] = 32  # imagefolder: images are resized to image_size x image_size
    image_mode: ImageMode = "auto"  # imagefolder: grey | rgb | auto (grey when every source image is single-channel)
    target_test_domain: str = ""  # imagefolder: a labeled target test folder (else each device's held-out share)
    usps_layout: UspsLayout = "resize"  # resize (16x16 stretched to 28x28) | box (20x20 box in 28x28, like MNIST)
    rgb: bool = False  # digit datasets as 3-channel images (grey replicated): the colour shifts, RGB models
    num_devices: Annotated[int, Field(ge=1)] = 10  # target devices (hapt, partition=subject: one per target subject)
    partition: Partition = "iid"
    dirichlet_alpha: Annotated[float, Field(gt=0)] = 0.5  # label-skew concentration for partition=dirichlet
    shifts: ShiftsMode = "auto"  # auto (digits: yes, real data: no) | always | never
    shift_kinds: list[ShiftKind] = Field(default_factory=list)  # empty: every shift of the modality
    max_shifts_per_device: Annotated[int, Field(ge=1, le=5)] = 2  # each device composes 1..this many shifts
    severity_min: Annotated[int, Field(ge=1, le=5)] = 2  # severities are drawn uniformly in [min, max]
    severity_max: Annotated[int, Field(ge=1, le=5)] = 4
    source_val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1  # held-out labeled source, for model selection
    target_test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3  # per-device labeled test share (evaluation only)
    max_source: Annotated[int, Field(ge=0)] = 0  # cap on source training samples (0: all)
    max_target: Annotated[int, Field(ge=0)] = 0  # cap on target training samples (0: all)
    samples_per_device: Annotated[int, Field(ge=0)] = 0  # >0: each device draws this many pool samples (overlap
    #   allowed across devices, each with its own shift), so fleets may outnumber the pool; 0: disjoint parts
    hapt_source_subjects: list[int] = Field(default_factory=lambda: list(range(1, 21)))

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        """Cross-field checks, each reported on one key."""
        if self.severity_min > self.severity_max:
            raise SectionError("severity_min", "must not exceed {p}severity_max")
        if self.dataset == "npz" and not self.path:
            raise SectionError("path", "required for dataset 'npz' (the npz file with x_source, y_source, x_target)")
        if self.dataset not in ("digits", "npz") and not self.data_dir:  # the named datasets read files there
            raise SectionError("data_dir", f"required for dataset {self.dataset!r}")
        if self.dataset == "imagefolder" and not (self.source_domain and self.target_domain):
            raise SectionError("source_domain", "imagefolder needs source_domain and target_domain")
        if self.rgb and self.dataset not in ("digits", "mnist_usps", "usps_mnist", "mnist_mnist"):
            raise SectionError("rgb", f"applies to the digit datasets, not {self.dataset!r}")
        return self

    def shifts_enabled(self) -> bool:
        """Whether devices get their own synthetic shift mix (``shifts: auto`` = the embedded digits only)."""
        return self.shifts == "always" or (self.shifts == "auto" and self.dataset == "digits")

    def devices_are_domains(self) -> bool:
        """True when each device is a domain of its own (a subject, or its own shift mix).

        Otherwise (iid or Dirichlet label skew over one target domain) devices differ only in how much
        of each class they hold, and per-device BatchNorm statistics would encode that class mix
        rather than the domain; BN is then adapted on the whole fleet's data instead.
        """
        return self.partition == "subject" or self.shifts_enabled()


class ModelSpec(Section):
    """Student/teacher architecture."""

    arch: str = "auto"  # auto: by dataset (admp.data.tasks.DEFAULT_ARCH; an npz file: by its samples' shape) |
    #   lenet | resnet | cnn1d | mlp | "package.module:factory": your own nn.Module (admp.custom)
    width: Annotated[float, Field(gt=0, le=8)] = 1.0  # channel width multiplier

    @model_validator(mode="after")
    def _known_arch(self) -> ModelSpec:
        """A family name, auto, or a factory path."""
        choices = get_args(ArchChoice)
        if self.arch not in choices and not FACTORY_PATH.match(self.arch):
            raise SectionError(
                "arch", f"{self.arch!r} is not one of {', '.join(choices)}, or a 'package.module:factory' path"
            )
        return self


class TeacherSpec(Section):
    """Supervised training of the teacher on labeled source data."""

    epochs: Annotated[int, Field(ge=0)] = 15  # the most epochs; the kept one is chosen on the source val split
    lr: Annotated[float, Field(gt=0)] = 0.05
    batch_size: Annotated[int, Field(ge=2)] = 64
    checkpoint: str = ""  # path of a saved teacher state_dict to load instead of training
    normalise: bool = True  # per-channel input normalisation from source statistics, inside the model
    augment: bool = True  # images: rotation +-10 deg, shift +-4/28; sensors: time shift, scaling, jitter
    photometric: Photometric = "auto"  # random looks per source image (admp.augment.randomise_appearance):
    #   auto = colour images only (grey and sensor tasks keep their recipe) | always (images) | never
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1  # SHOT's source recipe (epsilon 0.1)
    select_on_val: bool = True  # keep the epoch with the best source-validation accuracy (else the last)


class AdmpHyper(Section):
    """Hyper-parameters of the ADMP losses and optimisers (our reconstruction; see docs/method.md)."""

    prune_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.6  # p: share of channels removed per group
    lr: Annotated[float, Field(gt=0)] = 0.01  # SGD learning rate of the student's weights
    finetune_lr: Annotated[float, Field(gt=0)] = 0.01  # learning rate of KD fine-tuning of the pruned student,
    #   centralized and federated
    mask_lr: Annotated[float, Field(ge=0)] = 0.3  # SGD learning rate of m: high, so m tracks Z - U between dual steps
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    batch_size: Annotated[int, Field(ge=2)] = 64
    tau: Annotated[float, Field(gt=0)] = 4.0  # distillation temperature
    lambda_kd: Annotated[float, Field(ge=0)] = 1.0  # weight of the KD divergence in the training loss (the
    #   adversary always ascends the divergence itself); 0: self-training only (the teacher's own adaptation)
    lambda_pl: Annotated[float, Field(ge=0)] = 0.3  # weight of the pseudo-label cross-entropy: SHOT's
    #   published value (beta = 0.3), not tuned here
    pseudo_labels: PseudoLabels = "centroid"  # centroid: nearest class centroid of the student's features,
    #   the centroids aggregated over the fleet each round (SHOT's self-labelling, federated) |
    #   teacher: the teacher's argmax where its confidence >= pl_threshold
    centroids: CentroidScope = "auto"  # whose class centroids label a device's data: fleet (the server's
    #   aggregate of every device's sums: one target domain shared by the fleet) | device (its own data's:
    #   every device a domain of its own, where pooled features would mix domains; nothing leaves the
    #   device) | auto: by the same label-free rule as teacher_bn
    pl_threshold: Annotated[float, Field(ge=0, le=1)] = 0.9  # teacher confidence for a pseudo label (teacher)
    lambda_im: Annotated[float, Field(ge=0)] = 1.0  # weight of the information-maximisation term: SHOT's
    #   published value (Liang et al. 2020), not tuned here; 0 turns self-training off (pure KD)
    freeze_classifier: bool = False  # true: the classifier (last Linear) keeps its source weights in every target
    #   phase of every method, the features adapt to it: SHOT's hypothesis transfer (Liang et al. 2020). Off,
    #   as the study's rule had it: in one check (pooled self-training, MNIST->USPS, seed 0) both ended at
    #   94.72 % after 8 epochs, so nothing argued for changing the rule
    trainable: Literal["auto", "all", "norm"] = "auto"  # what devices train besides the masks: every weight |
    #   norm: only the normalisation layers' scale and shift (Tent, Wang et al. 2021), the parameter-efficient
    #   fine-tuning that keeps DP noise small (Yu et al. 2022: noise grows with the released dimension) |
    #   auto: norm under federation.privacy (a rule fixed before any private run), else all
    im_marginal: ImMarginal = "fleet"  # IM's diversity term: the fleet's mean prediction (aggregated on the
    #   server, the device's batch weighted by its share) | device: the device's own batch (SHOT as published)
    l1_m: Annotated[float, Field(ge=0)] = 0.02  # L1 push on m, which ranks channels before the first Z-step
    rho: Annotated[float, Field(ge=0)] = 1.0  # initial ADMM penalty; 0: no ADMM (ablation): plain L1 on m, top-k
    #   of m at the merge
    rho_gamma: Annotated[float, Field(ge=1)] = 1.2  # rho <- min(rho_gamma * rho, rho_max) after every Z-step
    #   (U rescaled)
    rho_max: Annotated[float, Field(gt=0)] = 10.0
    prune_ramp: Annotated[int, Field(ge=0)] = 0  # Z-steps over which the pruned share grows linearly to p (0 or 1:
    #   all at once)
    keep_init: KeepInit = "l1"  # where Z and m start (admp/warmstart.py; l1 by the label-free rule of
    #   studies/pruning.yaml: the fleet's score of the exported model, no target label): none: ones, the first
    #   Z-step prunes p at once | l1: the cloud's L1-norm keep set, the student recovered on the source
    #   under it (naive's start), penalty on from round 1, so only target evidence changes the choice |
    #   fisher: the keep set
    #   of the largest channel-gate Fisher information on the devices' unlabeled data (admp/importance.py),
    #   recovered on the source the same way | file: keep_path's set
    keep_path: str = ""  # keep_init file: a run's pruned_model.pt whose keep set both fedadmp and naive start from
    fisher_steps: Annotated[int, Field(ge=1)] = 3  # keep_init fisher: steps, each removing the same share of the
    #   channels left and re-measured under the last step's gates
    z_frozen: bool = False  # Z never moves from its start: a given keep set on FedADMP's schedule (ablation)
    merge_recovery: MergeRecovery = "auto"  # at the merge: student: the mask phase's student, pruned, is
    #   recovered on the labeled source with naive's recipe (a cut that removes channels m still used needs
    #   the repair naive's cut gets) | none: the pruned student as merged | teacher: the teacher pruned to
    #   the mask phase's keep set and recovered (the devices choose only the channels) | auto: student from
    #   ones (keep_init none), none from a keep set (m = Z from round 1: the cut removes only closed gates
    #   and the student was repaired at its start); always student under trainable norm
    adversary: bool = True  # the soft-mask adversary on/off (ablation)
    adv_lr: Annotated[float, Field(ge=0)] = 0.02  # largest per-step change of s (gradient normalised per group)
    adv_eps: Annotated[float, Field(ge=0, le=1)] = 0.1  # budget: mean(1 - s_g) <= adv_eps for every group
    s_min: Annotated[float, Field(ge=0, le=1)] = 0.5  # floor of the soft mask
    teacher_bn: TeacherBn = "auto"  # BN statistics of the teacher that makes the KD targets (AdaBN, Li et al.
    #   2016): local: re-estimated on the unlabeled data of the device it labels | fleet: re-estimated
    #   once on the whole fleet's data (pooled moments) | source: as trained | auto: local when devices
    #   are domains of their own, else fleet (resolved by admp.config.resolve_bn_modes)

    @model_validator(mode="after")
    def _keep_start(self) -> AdmpHyper:
        """A keep set to start from is whole at the first round: no ramp, and a file to read it from."""
        if self.keep_init == "file" and not self.keep_path:
            raise SectionError("keep_path", "required for {p}keep_init file (a run's pruned_model.pt)")
        if self.keep_init != "none" and self.prune_ramp > 1:
            raise SectionError("prune_ramp", "ramps the first Z-steps from ones; {p}keep_init starts at the full p")
        if self.z_frozen and self.keep_init == "none":
            raise SectionError("z_frozen", "needs {p}keep_init l1 or file: a frozen Z of ones prunes nothing")
        return self


class ScheduleSpec(Section):
    """Centralized ADMP phases, counted in epochs over the pooled target data."""

    budget: ScheduleBudget = "epochs"  # epochs: the counts below | federation: derived from the federation
    #   section, so that the centralized run trains on as many samples as a federated run does (the
    #   sampled share of the fleet times each device's local epochs, min_local_steps included, per round)
    teacher_epochs: Annotated[int, Field(ge=0)] = 0  # self-training epochs of the dense teacher first (IM +
    #   centroid pseudo labels, no KD), as federation.teacher_rounds does in a federated run
    warmup_epochs: Annotated[int, Field(ge=0)] = 3  # the first Z-step ends epoch warmup_epochs (rho = 0 before it)
    mask_epochs: Annotated[int, Field(ge=1)] = 15  # total epochs of the mask phase (warm-up included)
    admm_every: Annotated[int, Field(ge=1)] = 2  # epochs between Z/U steps after the warm-up
    finetune_epochs: Annotated[int, Field(ge=0)] = 8  # KD epochs of the physically pruned model

    @model_validator(mode="after")
    def _consistent(self) -> ScheduleSpec:
        """The warm-up is part of the mask phase; longer, no Z-step would ever run."""
        if self.warmup_epochs > self.mask_epochs:
            raise SectionError(
                "warmup_epochs",
                f"{self.warmup_epochs} exceeds {{p}}mask_epochs ({self.mask_epochs}), "
                "which include the warm-up: no Z-step would run",
            )
        return self


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
    sim_nodes: Annotated[int, Field(ge=0)] = 0  # simulation SuperNodes the virtual devices run on (slots; a
    #   round's devices take distinct ones); 0: as many as one exchange asks (simulation_nodes)
    bn_recalibration: BnRecalibration = "auto"  # global: pool client BN moments into the exported model |
    #   local: global, and each device re-estimates BN statistics on its own unlabeled data before
    #   inference | none: keep the FedAvg'd statistics | auto: local when every device is a domain
    #   of its own (subjects, shifted devices), else global (see DataSpec.devices_are_domains)
    min_replies: Annotated[int, Field(ge=1)] = 1  # a round with fewer valid replies keeps the previous global state
    round_timeout: Annotated[float, Field(gt=0)] = 600.0  # seconds to wait for a round's replies
    client_cpus: Annotated[float, Field(gt=0)] = 1.0  # Ray resources per virtual client
    ray_num_cpus: Annotated[int, Field(ge=0)] = 0  # CPUs given to Ray (0: all)
    ray_address: str = ""  # join an existing Ray cluster at this address ("" : start a local one)
    stop_after_round: Annotated[int, Field(ge=0)] = 0  # pause after this round (0: run to the end); --resume goes on
    aggregation: Aggregation = "auto"  # how replies and every fleet aggregate are combined (strategies/
    #   robust.py): mean = FedAvg | clip (updates clipped to clip_norm) | median | trimmed_mean (coordinate-
    #   wise, Yin et al. 2018) | auto: trimmed_mean, or mean under privacy or secure_aggregation (which need
    #   the mean). trimmed_mean was chosen by the rule of studies/aggregation.yaml, fixed before its runs
    trim_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.2  # trimmed_mean: share cut at each end per
    #   coordinate (int(share x replies) values: 0.2 cuts one of 5, the default clients per round)
    clip_norm: Annotated[float, Field(ge=0)] = 0.0  # clip: update norm bound; 0: the round's median update norm
    max_update_ratio: Annotated[float, Field(ge=0)] = 10.0  # a reply whose update is longer than this x the
    #   global model's norm is rejected (a replaced or boosted model); local rounds move far less; 0: off
    faults: FaultSpec = Field(default_factory=FaultSpec)  # injected faults, simulation only (admp/faults.py)
    profiles: ProfileSpec = Field(default_factory=ProfileSpec)  # device classes and the simulated fleet clock
    #   (admp/profiles.py): off while empty
    teacher_fallback: bool = True  # export the dense teacher when every pruned candidate's label-free score is
    #   worse than the teacher's by more than server.guards.FLAG_MARGIN (a collapsed run); false: the best
    #   pruned candidate ships anyway, flagged in the summary
    evaluate_labels: bool = True  # false: no device reads its labels (a deployment without them); runs report
    #   the label-free figures only, and no accuracy
    secure_aggregation: SecureSpec = Field(default_factory=SecureSpec)  # SecAgg+ over the training rounds
    #   (admp/secure.py): off by default
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)  # client-level DP of the training rounds
    #   (admp/privacy.py, strategies/privacy.py): off by default
    device_data: DeviceData = "scenario"  # scenario: each device's data is its partition of the scenario (the
    #   server knows its size and bounds every claimed count by it) | own: real devices bring their own data
    #   (node config data-path); the bound is then 10 x the round's median claim

    def check_fleet(self, num_devices: int) -> None:
        """Settings that need the fleet's size, known once the data is read (ConfigError naming the key)."""
        for key in ("clients_per_round", "min_replies", "sim_nodes"):
            value = getattr(self, key)
            if value > num_devices:
                raise ConfigError(f"federation.{key}: {value} exceeds the fleet's {num_devices} devices")
        needed = self.most_asked(num_devices)
        if 0 < self.sim_nodes < needed:
            raise ConfigError(
                f"federation.sim_nodes: {self.sim_nodes} nodes cannot run the {needed} devices one exchange asks "
                "(clients_per_round with over-selection, eval_clients)"
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
        """SuperNodes a simulation starts for ``num_devices`` virtual devices: ``sim_nodes``, else as many as
        one exchange asks, so start-up and rounds do not grow with the fleet (``strategies.roster``)."""
        return self.sim_nodes or self.most_asked(num_devices)

    def self_training_rounds(self) -> int:
        """``teacher_rounds`` as resolved for the run's fleet (``auto`` is resolved with the scenario)."""
        if self.teacher_rounds == "auto":
            raise ConfigError("federation.teacher_rounds: 'auto' is resolved with the whole scenario config")
        return self.teacher_rounds

    @model_validator(mode="after")
    def _consistent(self) -> FederationSpec:
        """Settings under which rounds would run but could never do their job (``aggregation: auto`` is
        resolved first: DP noise and SecAgg+'s sum are calibrated to the mean)."""
        if self.aggregation == "auto":
            self.aggregation = "mean" if self.privacy.active or self.secure_aggregation.enabled else "trimmed_mean"
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
        if self.privacy.active and (self.aggregation != "mean" or self.dual != "global"):
            raise SectionError(
                "privacy",
                f"needs {{p}}aggregation mean and {{p}}dual global (got {self.aggregation}, {self.dual}): "
                "the noise is calibrated to the mean of clipped contributions, and per-client duals would leave "
                "the devices unclipped",
            )
        if self.secure_aggregation.enabled:
            self._check_secure()
        return self

    def _check_secure(self) -> None:
        """What secure aggregation cannot do: see single replies (robust aggregation, per-client duals,
        server-side clipping for DP, the clock's per-reply timing, injected corruptions) or sum fewer than 2."""
        clash = {
            "aggregation": self.aggregation != "mean",
            "dual": self.dual != "global",
            "privacy": self.privacy.active,
            "profiles": self.profiles.active,
            "faults": self.faults.active,
            "clients_per_round": self.clients_per_round < 2,
        }
        for key, bad in clash.items():
            if bad:
                raise SectionError(
                    "secure_aggregation",
                    f"cannot be combined with {{p}}{key} = {getattr(self, key)!r}: the server sees only the sum of "
                    "at least 2 replies (needs mean aggregation, the global dual, no privacy, profiles or faults)",
                )


class ScenarioConfig(Section):
    """Everything a run needs: centralized runs use ``schedule``, federated ones ``federation``."""

    run: RunSpec = Field(default_factory=RunSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    admp: AdmpHyper = Field(default_factory=AdmpHyper)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    federation: FederationSpec = Field(default_factory=FederationSpec)

    @model_validator(mode="after")
    def _resolve(self) -> ScenarioConfig:
        """A validated scenario has no ``auto`` left (BN modes, centroids, teacher rounds)."""
        resolve_bn_modes(self)
        return self


def resolve_bn_modes(cfg: ScenarioConfig) -> None:
    """Replace ``auto`` BatchNorm modes by what the fleet's structure calls for, in place.

    Devices that are domains of their own adapt BN per device (teacher targets and inference:
    ``local``); devices that share one target domain and differ only in label mix adapt BN on the
    whole fleet (teacher: ``fleet``, inference: ``global``). The rule uses no label. Under
    ``federation.privacy`` BN is always adapted on each device (pooled moments would be releases
    outside the accounted rounds: ``fleet`` / ``global`` are an error, as is ``keep_init: fisher``) and
    ``admp.trainable`` ``auto`` is ``norm`` (else ``all``). ``admp.merge_recovery`` ``auto`` follows
    ``keep_init`` (its comment says why).
    """
    own_domains = cfg.data.devices_are_domains()
    private = cfg.federation.privacy.active
    if cfg.admp.teacher_bn == "auto":
        cfg.admp.teacher_bn = "local" if own_domains or private else "fleet"
    if cfg.admp.centroids == "auto":
        cfg.admp.centroids = "device" if own_domains else "fleet"
    if cfg.federation.teacher_rounds == "auto":
        cfg.federation.teacher_rounds = 0 if own_domains else 3
    if cfg.federation.bn_recalibration == "auto":
        cfg.federation.bn_recalibration = "local" if own_domains or private else "global"
    if cfg.admp.trainable == "auto":
        cfg.admp.trainable = "norm" if private else "all"
    if cfg.admp.merge_recovery == "auto":
        cfg.admp.merge_recovery = "student" if cfg.admp.keep_init == "none" else "none"
    if private and cfg.admp.keep_init == "fisher":
        raise SectionError(
            "", "admp.keep_init: fisher releases per-channel statistics of device data outside the accounted rounds"
        )
    pooled = [
        ("admp.teacher_bn", cfg.admp.teacher_bn, "fleet"),
        ("federation.bn_recalibration", cfg.federation.bn_recalibration, "global"),
    ]
    for key, value, pooling in pooled:
        if private and value == pooling:
            raise SectionError(
                "",
                f"{key}: {pooling} pools BN moments over the fleet, which a private run does not release; "
                "use local (each device adapts BN on its own data)",
            )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if node is None:  # an empty section in the YAML file
                node = data[part] = {}
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({yaml_problem(exc)})") from exc
    return data


def config_from_overrides(overrides: list[str]) -> ScenarioConfig:
    """The built-in defaults plus ``key=value`` overrides, validated (a scenario without a file)."""
    return parse_section(ScenarioConfig, apply_overrides({}, overrides))


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML of ``path`` (None for an empty file); a missing, non-UTF-8 or malformed file
    is one ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from exc


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parser's error as one line: the problem and where (line:column, 1-based), without the
    parser's multi-line context and source excerpts."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{exc.problem or exc.context or 'malformed'}"
    return " ".join(str(exc).split())


def load_config(path: str | Path, overrides: list[str] | None = None) -> ScenarioConfig:
    """Read a YAML file (plus ``key=value`` overrides) into a validated scenario; errors are ConfigError."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: empty config file (a scenario has at least one section; see docs/configuration.md)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return parse_section(ScenarioConfig, apply_overrides(data, overrides or []))


def to_yaml(cfg: Section) -> str:
    """The resolved config (defaults filled in) as YAML, keys in field order."""
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
