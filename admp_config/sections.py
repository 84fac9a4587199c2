"""The scenario's sections besides the federation: run, data, model, teacher, ADMP, schedule."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from admp_config.base import Section, SectionError
from admp_config.choices import (
    FACTORY_PATH,
    ArchChoice,
    CentroidScope,
    Dataset,
    ImageMode,
    ImMarginal,
    InputStats,
    KeepInit,
    MergeRecovery,
    Partition,
    Photometric,
    PseudoLabels,
    ScheduleBudget,
    ShiftKind,
    ShiftsMode,
    TeacherBn,
    UspsLayout,
)


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
    path: str = ""  # npz: the user's file (x_source, y_source, x_target, ...; admp_data.npz, docs/data.md)
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

    arch: str = "auto"  # auto: by dataset (admp_data.tasks.DEFAULT_ARCH; an npz file: by its samples' shape) |
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
    input_stats: InputStats = "auto"  # source: normalise by the source's per-channel mean and std |
    #   image: by each sample's own (instance normalisation of the input: a shift of mean colour is removed) |
    #   auto = image for colour images, source for the rest (the rule in docs/results.md, appearance shifts)
    grey_input: bool = False  # the model converts every input to grey first (it is trained on grey; hue never
    #   reaches it, on the source or on a device)
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
    latency_budget: Annotated[float, Field(gt=0, lt=1)] | None = None  # a share of the dense model's ONNX
    #   Runtime latency (batch 1 and 64, this CPU) the pruned model must meet: the run measures candidates and
    #   picks per-group ratios (admp_export.latency, written to group_ratios) instead of the uniform p
    group_ratios: dict[str, Annotated[float, Field(ge=0, lt=1)]] = {}  # per-group pruning ratios; {}: the
    #   uniform prune_ratio; filled by the latency search when latency_budget is set (resume reads them back)
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
    #   are domains of their own, else fleet (resolved by admp_config.schema.resolve_bn_modes)

    def ratio(self) -> float | dict[str, float]:
        """The pruning plan: one ratio per group where set (a latency plan), else the uniform ``prune_ratio``."""
        return dict(self.group_ratios) if self.group_ratios else self.prune_ratio

    @model_validator(mode="after")
    def _keep_start(self) -> AdmpHyper:
        """A keep set to start from is whole at the first round: no ramp, and a file to read it from."""
        if self.keep_init == "file" and not self.keep_path:
            raise SectionError("keep_path", "required for {p}keep_init file (a run's pruned_model.pt)")
        if self.keep_init != "none" and self.prune_ramp > 1:
            raise SectionError("prune_ramp", "ramps the first Z-steps from ones; {p}keep_init starts at the full p")
        if self.z_frozen and self.keep_init == "none":
            raise SectionError("z_frozen", "needs {p}keep_init l1 or file: a frozen Z of ones prunes nothing")
        if (self.latency_budget is not None or self.group_ratios) and self.keep_init == "fisher":
            raise SectionError("keep_init", "fisher steps one uniform ratio; a latency plan has one per group")
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
