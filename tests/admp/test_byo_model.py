"""Bring your own model (issue 10): a user's nn.Module by "package.module:factory", its channel groups
found by Torch-Pruning's dependency graph, and the whole pipeline unchanged."""

import json

import pytest
import torch
from rich.console import Console

from admp.masks import gated, group_sizes
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model
from admp.teacher import initial_model
from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from admp_export.bundle import load_bundle
from admp_export.formats import export_onnx, onnx_max_abs_diff
from server.app import run_federated
from tests.inprocess_grid import InProcessGrid

MOBILE = "examples.byo_models:tiny_mobilenet"


def test_the_dependency_graph_couples_a_residual_add_and_a_depthwise_conv():
    model = build_model(MOBILE, 10, 1.0, (1, 28, 28))
    assert groups_of(model) == {
        "net.stem_bn": ["net.stem_bn", "net.block1.project_bn"],  # the two summands of a residual add
        "net.block1.expand_bn": ["net.block1.expand_bn", "net.block1.depthwise_bn"],  # depthwise: channel for channel
        "net.down_bn": ["net.down_bn", "net.block2.project_bn"],
        "net.block2.expand_bn": ["net.block2.expand_bn", "net.block2.depthwise_bn"],
    }
    assert groups_of(build_model("examples.byo_models:plain_mlp", 3, 1.0, (16,))) == {
        "net.2": ["net.2"],
        "net.5": ["net.5"],
    }


@pytest.mark.parametrize("arch,shape", [(MOBILE, (3, 20, 20)), ("examples.byo_models:plain_mlp", (16,))])
def test_a_users_model_is_gated_pruned_and_exported_exactly(tmp_path, arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, 4, 1.0, shape).eval()
    groups = groups_of(model)
    keep = {g: (torch.arange(n) % 2 == 0).float() for g, n in group_sizes(model, groups).items()}
    x = torch.rand(5, *shape)
    with torch.no_grad(), gated(model, groups, keep):
        masked = model(x)
    pruned = prune_model(model, groups, keep, example_input(model)).eval()
    assert torch.allclose(pruned(x), masked, atol=1e-5)  # removal is exact for the masked model
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    path = export_onnx(pruned, example_input(pruned), tmp_path / "user.onnx")
    assert onnx_max_abs_diff(path, pruned, x) < 1e-4


@pytest.mark.parametrize(
    "arch,needle",
    [
        ("no_such_package.models:net", "cannot import 'no_such_package.models'"),
        ("examples.byo_models:missing", "has no callable 'missing'"),
        ("tests.byo_refused:not_a_module", "returned str, not a torch.nn.Module"),
        ("tests.byo_refused:without_batchnorm", "no prunable channels"),
        ("examples.byo_models:plain_mlp", r"cannot take samples of shape \(1, 28, 28\)"),
    ],
)
def test_a_model_that_cannot_work_is_refused_before_training(arch, needle):
    cfg = config_from_overrides([f"model.arch={arch}"])
    with pytest.raises(ConfigError, match="model.arch: .*" + needle):
        initial_model(cfg, 10, (1, 28, 28))


def test_arch_is_a_family_or_a_factory_path():
    with pytest.raises(ConfigError, match=r"'vgg' is not one of auto, lenet, resnet, cnn1d, mlp, or a 'package"):
        config_from_overrides(["model.arch=vgg"])
    assert config_from_overrides([f"model.arch={MOBILE}"]).model.arch == MOBILE


def test_federated_admp_prunes_a_users_model_end_to_end(tmp_path, monkeypatch, flower_task):
    monkeypatch.setattr("server.setup.Console", lambda: Console(quiet=True))
    setup = [f"model.arch={MOBILE}", "data.num_devices=3", "data.samples_per_device=40", "teacher.epochs=2"]
    setup.append("data.max_source=300")
    fed = ["federation.clients_per_round=2", "federation.mask_rounds=2", "federation.warmup_rounds=1"]
    fed += ["federation.finetune_rounds=1", "federation.teacher_rounds=0", "federation.teacher_fallback=false"]
    cfg = config_from_overrides([*setup, *fed, "run.threads=2", f"run.out_dir={tmp_path}"])
    run_federated(InProcessGrid(3), cfg, None)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    # p = 0.6 keeps ceil(0.4 * 16) = 7 of 16 channels, ceil(0.4 * 32) = 13 of 32, ceil(0.4 * 64) = 26 of 64
    channels = {"net.stem_bn": 7, "net.block1.expand_bn": 13, "net.down_bn": 13, "net.block2.expand_bn": 26}
    assert summary["arch"] == MOBILE and summary["student"]["channels"] == channels
    device_model = load_bundle(run / "pruned_model.pt")  # what a device loads, by the same factory path
    assert device_model.net.block2.depthwise.groups == 26 and device_model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
