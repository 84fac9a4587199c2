"""Every choice list of the project, once: a ``Literal`` type for the config and a tuple for runtime.

The config models (``admp_config``) annotate their fields with these types, so a value outside a
list is rejected with the list in the message; the modules that act on a choice (datasets, model
builders, shifts, the study runner) take their tuples from here, so adding an option is one edit.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

Dataset = Literal["digits", "mnist_usps", "usps_mnist", "mnist_mnist", "hapt", "imagefolder", "npz"]
Arch = Literal["lenet", "resnet", "cnn1d", "mlp"]
ArchChoice = Literal["auto", Arch]  # auto: the dataset's default architecture (admp_data.tasks.DEFAULT_ARCH)
Photometric = Literal["auto", "always", "never"]  # teacher.photometric
InputStats = Literal["auto", "source", "image"]  # teacher.input_stats
Partition = Literal["iid", "dirichlet", "subject"]
UspsLayout = Literal["resize", "box"]
ImageMode = Literal["auto", "grey", "rgb"]
ShiftsMode = Literal["auto", "always", "never"]
ImageShift = Literal["noise", "blur", "contrast", "rotation", "lowres"]
ColourShift = Literal[
    "colour", "texture", "blend", "invert", "channel_swap"
]  # RGB images (texture, blend, invert: grey too)
SensorShift = Literal["noise", "gain", "offset"]
ShiftKind = Literal[ImageShift, ColourShift, SensorShift]  # nested Literals flatten; "noise" appears once
Strategy = Literal["fedkd", "naive", "fedtiny", "fedadmp"]
Method = Literal[Strategy, "centralized"]  # a study's methods: the strategies plus the centralized run
VariantMethod = Literal["naive", "fedtiny", "fedadmp", "centralized"]  # methods that prune (ablation variants)
Dual = Literal["global", "per_client"]
BnRecalibration = Literal["auto", "global", "local", "none"]
TeacherBn = Literal["auto", "local", "fleet", "source"]
ImMarginal = Literal["fleet", "device"]
PseudoLabels = Literal["centroid", "teacher"]
CentroidScope = Literal["auto", "fleet", "device"]
ScheduleBudget = Literal["epochs", "federation"]
DeviceData = Literal["scenario", "own"]  # federation.device_data
KeepInit = Literal["none", "l1", "fisher", "file"]  # admp.keep_init (admp.warmstart)
MergeRecovery = Literal["auto", "none", "student", "teacher"]  # admp.merge_recovery (server.phases.mask_phase)
Aggregation = Literal["auto", "mean", "clip", "median", "trimmed_mean"]  # strategies.robust (auto: resolved)

FACTORY_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # model.arch: a user's "package.module:factory"

DATASETS: tuple[str, ...] = get_args(Dataset)
ARCHS: tuple[str, ...] = get_args(Arch)
PARTITIONS: tuple[str, ...] = get_args(Partition)
USPS_LAYOUTS: tuple[str, ...] = get_args(UspsLayout)
IMAGE_SHIFTS: tuple[str, ...] = get_args(ImageShift)
COLOUR_SHIFTS: tuple[str, ...] = get_args(ColourShift)
SENSOR_SHIFTS: tuple[str, ...] = get_args(SensorShift)
SHIFT_KINDS: tuple[str, ...] = get_args(ShiftKind)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
METHODS: tuple[str, ...] = get_args(Method)
VARIANT_METHODS: tuple[str, ...] = get_args(VariantMethod)

assert set(VARIANT_METHODS) <= set(METHODS), "every variant method must be a study method"
