"""Where the hard mask starts (admp.warmstart, AdmpState.warm_started, z_frozen) and the label-free
choice of what a run exports (server.guards.choose_export)."""

import pytest
import torch

from admp.masks import gated, group_sizes
from admp.models import build_model, example_input
from admp.source import train_supervised
from admp.state import AdmmSettings, AdmpState
from admp.surgery import l1_filter_scores, prune_model
from admp.warmstart import cloud_keep, keep_overlap, layerwise_keeps, read_keep
from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from admp_data.sources import DataError
from server.guards import ADAPTED_MARGIN, FLAG_MARGIN, KEEP_MARGIN, choose_export, reference_guard


def _settings(z_frozen: bool = False) -> AdmmSettings:
    return AdmmSettings(prune_ratio=0.5, rho0=1.0, rho_gamma=2.0, rho_max=10.0, z_frozen=z_frozen)


def test_warm_start_holds_m_at_the_keep_set_from_the_first_round():
    keep = {"g": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    state = AdmpState.warm_started(_settings(), keep)
    assert torch.equal(state.m["g"], keep["g"]) and torch.equal(state.z["g"], keep["g"])
    assert state.rho == 1.0 and torch.equal(state.s["g"], torch.ones(4))
    # penalty at m = 1: (rho/2) * ||1 - Z + 0||^2 = 0.5 * (0 + 1 + 0 + 1) = 1.0
    assert float(state.penalty({"g": torch.ones(4)})) == pytest.approx(1.0)
    keep["g"][1] = 1.0  # the state holds copies
    assert state.z["g"][1] == 0.0


def test_target_evidence_swaps_a_channel_and_a_frozen_z_does_not():
    keep = {"g": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    for frozen, expected in ((False, [1.0, 1.0, 0.0, 0.0]), (True, [1.0, 0.0, 1.0, 0.0])):
        state = AdmpState.warm_started(_settings(frozen), keep)
        state.m = {"g": torch.tensor([0.9, 0.8, 0.3, 0.0])}  # the devices raised channel 1, let channel 2 fall
        state.admm_step()
        # Z = top-2(m + U) = top-2([0.9, 0.8, 0.3, 0.0]) = channels 0, 1; frozen: Z stays the start
        assert state.z["g"].tolist() == expected
        assert state.merge_mask()["g"].tolist() == expected
        # U = 0 + m - Z, then rescaled by rho_old / rho_new = 1 / 2
        assert state.rho == 2.0
        assert state.u["g"].tolist() == pytest.approx(((state.m["g"] - torch.tensor(expected)) / 2).tolist())


def test_cloud_keep_is_the_top_k_filters_by_l1_norm():
    model = build_model("mlp", 3)
    groups = model.channel_groups()
    scores = l1_filter_scores(model, groups, example_input(model))
    keep = cloud_keep(model, groups, 0.5, example_input(model))
    assert set(keep) == set(group_sizes(model, groups))
    for group, mask in keep.items():
        k = (mask.numel() + 1) // 2  # ceil(0.5 * C)
        assert int(mask.sum()) == k
        assert scores[group][mask == 1].min() >= scores[group][mask == 0].max()  # every kept filter is heavier


def test_recovering_under_gates_equals_recovering_the_pruned_copy():
    """mask_start's claim: the gated dense student, recovered on the source, prunes to exactly the model
    naive recovers (the same batches; a gated channel outputs 0 and gets no gradient)."""
    torch.manual_seed(0)
    model = build_model("mlp", 3).eval()
    groups = model.channel_groups()
    keep = cloud_keep(model, groups, 0.5, example_input(model))
    x, y = torch.randn(64, *model.input_shape), torch.randint(0, 3, (64,))
    recipe = config_from_overrides(["teacher.augment=false"]).teacher
    pruned = prune_model(model, groups, keep, example_input(model))
    train_supervised(pruned, x, y, recipe, torch.Generator().manual_seed(1), epochs=2, lr=0.05)
    gated_dense = build_model("mlp", 3)
    gated_dense.load_state_dict(model.state_dict())
    with gated(gated_dense, groups, keep):
        train_supervised(gated_dense, x, y, recipe, torch.Generator().manual_seed(1), epochs=2, lr=0.05)
    transplanted = prune_model(gated_dense, groups, keep, example_input(model))
    with torch.no_grad():
        assert (transplanted(x) - pruned(x)).abs().max() < 1e-4


def test_keep_file_is_checked_against_the_model(tmp_path):
    model = build_model("mlp", 3)
    sizes = group_sizes(model, model.channel_groups())
    keep = cloud_keep(model, model.channel_groups(), 0.5, example_input(model))
    path = tmp_path / "pruned_model.pt"
    torch.save({"keep": keep}, path)
    assert all(torch.equal(read_keep(path, sizes, 0.5)[g], keep[g]) for g in keep)
    with pytest.raises(DataError, match=r"keeps .* prune_ratio keeps"):
        read_keep(path, sizes, 0.8)
    with pytest.raises(DataError, match="not found"):
        read_keep(tmp_path / "missing.pt", sizes, 0.5)
    torch.save({"keep": {}}, path)
    with pytest.raises(DataError, match="no keep set"):
        read_keep(path, sizes, 0.5)
    path.write_bytes(b"not a bundle")
    with pytest.raises(DataError, match="not a FedADMP model bundle"):
        read_keep(path, sizes, 0.5)


def test_keep_overlap_counts_shared_kept_channels():
    a = {"g": torch.tensor([1.0, 1.0, 0.0, 0.0]), "h": torch.tensor([1.0, 0.0])}
    b = {"g": torch.tensor([1.0, 0.0, 1.0, 0.0]), "h": torch.tensor([1.0, 0.0])}
    assert keep_overlap(a, b) == pytest.approx(2 / 3)  # a keeps 3; b keeps g0 and h0 of them
    assert keep_overlap(a, a) == 1.0


def test_keep_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match=r"admp\.keep_path: required"):
        config_from_overrides(["admp.keep_init=file"])
    with pytest.raises(ConfigError, match=r"admp\.prune_ramp"):
        config_from_overrides(["admp.keep_init=l1", "admp.prune_ramp=3"])
    with pytest.raises(ConfigError, match=r"admp\.z_frozen"):
        config_from_overrides(["admp.keep_init=none", "admp.z_frozen=true"])


def test_the_trained_result_is_exported_unless_a_start_is_clearly_better():
    # scores: lower is better; the final is within KEEP_MARGIN (0.05) of the best (-1.30): kept
    assert choose_export([("final", -1.27), ("start", -1.30), ("cloud", -1.20)], -1.0)[0] == "final"
    # the cloud start is 0.2 better than the final (more than 0.05): the cloud start is exported
    assert choose_export([("final", -1.00), ("start", -1.05), ("cloud", -1.20)], -1.0)[0] == "cloud"
    # the merge is best: the start wins over the cloud
    assert choose_export([("final", -0.90), ("start", -1.20), ("cloud", -1.00)], -1.0)[0] == "start"
    assert KEEP_MARGIN == 0.05 and FLAG_MARGIN == 0.1


def test_a_flagged_run_falls_back_to_the_teacher_and_unscored_candidates_are_passed_over():
    # every pruned candidate is worse than the teacher (-1.27) by more than 0.1: -1.16 > -1.17
    name, reason = choose_export([("final", -1.10), ("start", -1.16), ("cloud", None)], -1.27)
    assert name == "teacher" and "dense teacher" in reason
    # -1.18 is within 0.1 of the teacher: a pruned model ships
    assert choose_export([("final", -1.10), ("start", -1.18)], -1.27)[0] == "start"
    assert choose_export([("final", None), ("start", None)], -1.0)[0] == "final"
    assert choose_export([("final", -0.5)], None)[0] == "final"  # no teacher score: no fallback


def test_layerwise_candidates_keep_the_uniform_total():
    model = build_model("lenet", 10)
    groups = model.channel_groups()
    example = example_input(model)
    keeps = layerwise_keeps(model, groups, 0.6, example, 5, torch.Generator().manual_seed(0))
    uniform = cloud_keep(model, groups, 0.6, example)
    assert all(torch.equal(keeps[0][g], uniform[g]) for g in uniform)  # the first is naive's choice
    total = sum(int(v.sum()) for v in uniform.values())
    for keep in keeps[1:]:
        assert sum(int(v.sum()) for v in keep.values()) == total and all(v.sum() >= 1 for v in keep.values())
    assert any(any(not torch.equal(k[g], uniform[g]) for g in uniform) for k in keeps[1:])  # ratios differ


def test_transplant_table_averages_each_arm_over_seeds(tmp_path):
    from simulations.transplant import ARMS, COLUMNS, write_table

    rows = [
        {"task": "t", "arm": "naive", "prune_ratio": 0.9, "seed": 0, "start_acc": 90.0, "final_acc": 94.0},
        {"task": "t", "arm": "naive", "prune_ratio": 0.9, "seed": 1, "start_acc": 92.0, "final_acc": 96.0},
        {"task": "t", "arm": "fedadmp_ones", "prune_ratio": 0.9, "seed": 0, "start_acc": "", "final_acc": 93.0},
    ]
    lines = [",".join(COLUMNS)]
    for r in rows:
        overlap = 1.0 if r["arm"] == "naive" else 0.5
        lines.append(",".join(str(v) for v in (*r.values(), 12, overlap, "dir")))
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    table = write_table(tmp_path / "t.csv", tmp_path / "t.md").read_text()
    # naive: starts 90, 92 -> 91.00 +- 1.41; finals 94, 96 -> 95.00 +- 1.41 (std of two values 2 apart: sqrt(2))
    assert "| t | 0.9 | naive | 91.00 ± 1.41 (n=2) | 95.00 ± 1.41 (n=2) | 12 | 1.00 |" in table
    assert "| t | 0.9 | fedadmp_ones | — | 93.00 ± 0.00 (n=1) | 12 | 0.50 |" in table
    assert list(ARMS)[:2] == ["naive", "fedadmp_ones"]  # fedadmp_ones's keep file feeds a later arm


def test_a_candidate_gives_way_to_the_self_trained_teacher_only_beyond_the_margin():
    # disagreement with the self-trained teacher, %: the candidate's against the source teacher's + 1 point
    assert ADAPTED_MARGIN == 1.0
    assert reference_guard(8.50, 5.40)  # 8.50 > 6.40: an estimated 3.1 points below teacher + target BN
    assert not reference_guard(6.40, 5.40)  # exactly at the margin: stays
    assert not reference_guard(2.50, 15.00)  # nearer the adapted teacher than the source teacher: stays
    assert not reference_guard(None, 5.40) and not reference_guard(8.50, None)  # nothing measured: stays
