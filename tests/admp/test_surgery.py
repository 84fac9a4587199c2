import math

import pytest
import torch
from torch import nn

from admp import admm
from admp.custom import traced_groups
from admp.masks import gated, group_sizes, zeros_masks
from admp.metrics import channels_kept, count_macs, count_params
from admp.models import build_model, example_input
from admp.surgery import l1_filter_scores, prune_model
from admp_export.formats import export_onnx, export_torchscript, onnx_max_abs_diff

FAMILIES = [("lenet", 10), ("resnet", 10), ("cnn1d", 6), ("mlp", 5)]


def _trained_like(arch: str, classes: int) -> nn.Module:
    """A model with non-trivial BN statistics and affine parameters."""
    torch.manual_seed(0)
    model = build_model(arch, classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *model.input_shape))
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("arch,classes", FAMILIES)
def test_declared_groups_match_torch_pruning_dependency_graph(arch, classes):
    model = build_model(arch, classes)
    declared = sorted(sorted(v) for v in model.channel_groups().values())
    traced = sorted(sorted(s) for s in traced_groups(model, example_input(model)).values())
    assert declared == traced


@pytest.mark.parametrize("arch,classes", FAMILIES)
@pytest.mark.parametrize("p", [0.3, 0.6])
def test_pruned_model_equals_masked_model(arch, classes, p):
    model = _trained_like(arch, classes)
    groups = model.channel_groups()
    sizes = group_sizes(model, groups)
    gen = torch.Generator().manual_seed(3)
    keep = admm.z_step({g: torch.rand(c, generator=gen) for g, c in sizes.items()}, zeros_masks(sizes), p)
    x = torch.randn(8, *model.input_shape, generator=gen)
    with torch.no_grad(), gated(model, groups, keep):
        masked = model(x)
    pruned = prune_model(model, groups, keep, example_input(model))
    with torch.no_grad():
        out = pruned(x)
    assert (out - masked).abs().max() < 1e-5
    kept = channels_kept(pruned, groups)
    for g, c in sizes.items():
        assert kept[g] == math.ceil(round((1 - p) * c, 9))
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned, example_input(pruned)) < count_macs(model, example_input(model))
    # the input model is untouched
    assert channels_kept(model, groups) == sizes


def test_lenet_param_count_by_hand():
    model = build_model("lenet", 10)
    conv1 = 1 * 32 * 25 + 32
    conv2 = 32 * 64 * 25 + 64
    bns = 2 * (32 + 64)
    fc = 1024 * 128 + 128 + 128 * 10 + 10
    assert count_params(model) == conv1 + conv2 + bns + fc


@pytest.mark.parametrize("arch,classes", FAMILIES)
def test_onnx_and_torchscript_exports_match(arch, classes, tmp_path):
    model = _trained_like(arch, classes)
    groups = model.channel_groups()
    sizes = group_sizes(model, groups)
    keep = admm.z_step({g: torch.linspace(0, 1, c) for g, c in sizes.items()}, zeros_masks(sizes), 0.5)
    pruned = prune_model(model, groups, keep, example_input(model))
    x = torch.randn(5, *model.input_shape)
    onnx_path = export_onnx(pruned, example_input(pruned), tmp_path / "m.onnx")
    assert onnx_max_abs_diff(onnx_path, pruned, x) < 1e-4  # batch 5 though exported with 1
    ts = torch.jit.load(str(export_torchscript(pruned, example_input(pruned), tmp_path / "m.ts")))
    with torch.no_grad():
        assert (ts(x) - pruned(x)).abs().max() < 1e-5


def test_l1_scores_sum_the_filters_or_rows_that_make_each_channel():
    """L1-norm pruning's criterion, by hand: conv1's 4 filters of 1x5x5 weights set to 0.01 * (c + 1)
    score 0.25 * (c + 1); an MLP's hidden units score the L1 norms of their fc1 rows, |0.5| + |-0.5| and 1 + 1."""
    lenet = build_model("lenet", 10, 0.125)  # conv1: 4 channels
    with torch.no_grad():
        for c in range(4):
            lenet.conv1.weight[c] = 0.01 * (c + 1)
    scores = l1_filter_scores(lenet, lenet.channel_groups(), example_input(lenet))
    assert scores["conv1"].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    mlp = build_model("mlp", 3, 0.0078125, (2,))  # fc1: 2 hidden units of 2 inputs
    with torch.no_grad():
        mlp.fc1.weight.copy_(torch.tensor([[0.5, -0.5], [1.0, 1.0]]))
    assert l1_filter_scores(mlp, mlp.channel_groups(), example_input(mlp))["fc1"].tolist() == pytest.approx([1.0, 2.0])
