"""Client-level DP (issue: privacy you can state): the clipping and noise maths, the accountant and its
calibration, the config rules, and tiny private federations (central, local, a budget stop)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from admp_config.base import ConfigError
from admp_config.privacy import PrivacySpec
from admp_config.schema import config_from_overrides
from admp_privacy.dp import add_noise, clip_part, clipped_contribution, l2_norm, mean_parts
from server.app import run_federated
from strategies.privacy import Privacy, calibrate, epsilon_after
from tests.inprocess_grid import InProcessGrid
from tests.server.test_server import TINY

pytestmark = pytest.mark.usefixtures("flower_task")


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def test_each_part_is_clipped_to_its_share_of_the_bound():
    assert torch.allclose(clip_part({"x": _t(3.0, 4.0)}, 1.0)["x"], _t(0.6, 0.8))  # |(3, 4)| = 5 -> 1
    assert torch.equal(clip_part({"x": _t(0.3, 0.4)}, 1.0)["x"], _t(0.3, 0.4))  # shorter: unchanged
    parts = {"a": {"x": _t(3.0, 4.0)}, "b": {"y": _t(0.0, 0.1)}}
    reference = {"a": {"x": _t(0.0, 0.0)}, "b": {"y": _t(0.0, 0.0)}}
    out = clipped_contribution(parts, reference, clip=math.sqrt(2))  # 2 parts: each at most 1
    assert torch.allclose(out["a"]["x"], _t(0.6, 0.8)) and torch.allclose(out["b"]["y"], _t(0.0, 0.1))
    total = math.sqrt(l2_norm(out["a"]) ** 2 + l2_norm(out["b"]) ** 2)
    assert total <= math.sqrt(2) + 1e-6


def test_noise_has_the_asked_spread_and_the_mean_counts_each_device_once():
    gen = torch.Generator().manual_seed(0)
    noised = add_noise({"a": {"x": torch.zeros(20000)}}, 0.5, gen)["a"]["x"]
    assert abs(float(noised.std()) - 0.5) < 0.02 and abs(float(noised.mean())) < 0.02
    mean = mean_parts([{"a": {"x": _t(1.0)}}, {"a": {"x": _t(3.0)}}])
    assert torch.equal(mean["a"]["x"], _t(2.0))


def test_the_accountant_composes_and_calibrates():
    eps_10 = epsilon_after("central", 1.0, 10, 50, 1000, 1e-3)
    assert 0 < eps_10 < epsilon_after("central", 1.0, 40, 50, 1000, 1e-3)  # more rounds: more epsilon
    assert epsilon_after("central", 2.0, 10, 50, 1000, 1e-3) < eps_10  # more noise: less
    assert epsilon_after("central", 1.0, 10, 100, 1000, 1e-3) > eps_10  # more sampled: less amplification
    assert epsilon_after("local", 1.0, 10, 50, 1000, 1e-3) > eps_10  # local: no amplification
    z = calibrate("central", 4.0, 20, 50, 1000, 1e-3)
    assert (
        epsilon_after("central", z, 20, 50, 1000, 1e-3) <= 4.0 < epsilon_after("central", z * 0.98, 20, 50, 1000, 1e-3)
    )


def test_central_release_is_the_mean_of_clipped_differences_plus_noise():
    spec = PrivacySpec(mode="central", clip=1.0, noise_multiplier=1e-6)
    privacy = Privacy(spec, population=10, sample=2, planned_rounds=5, seed=0)
    reference = {"w": {"x": _t(1.0, 1.0)}}
    parts = [{"w": {"x": _t(4.0, 5.0)}}, {"w": {"x": _t(1.0, 1.5)}}]  # differences (3, 4) -> (0.6, 0.8); (0, 0.5)
    out = privacy.release(1, parts, reference)
    assert torch.allclose(out["w"]["x"], _t(1.3, 1.65), atol=1e-4)
    assert privacy.releases == 1 and privacy.epsilon() > 0


def test_private_runs_need_noise_and_the_mean_and_keep_bn_on_the_devices():
    with pytest.raises(ConfigError, match=r"federation\.privacy\.noise_multiplier: set exactly one"):
        config_from_overrides(["federation.privacy.mode=central"])
    with pytest.raises(ConfigError, match=r"federation\.privacy: needs federation\.robust\.aggregation mean"):
        config_from_overrides(
            [
                "federation.privacy.mode=central",
                "federation.privacy.target_epsilon=8",
                "federation.robust.aggregation=median",
            ]
        )
    with pytest.raises(ConfigError, match=r"admp\.teacher_bn: fleet pools BN moments"):
        config_from_overrides(
            ["federation.privacy.mode=central", "federation.privacy.target_epsilon=8", "admp.teacher_bn=fleet"]
        )
    cfg = config_from_overrides(["federation.privacy.mode=local", "federation.privacy.noise_multiplier=1"])
    assert (cfg.admp.teacher_bn, cfg.federation.bn_recalibration) == ("local", "local")  # auto under privacy
    assert not config_from_overrides(["federation.privacy.mode=off"]).federation.privacy.active  # YAML's off


def _private_run(out: Path, *extra: str) -> dict:
    cfg = config_from_overrides([*TINY, f"run.out_dir={out}", *extra])
    run_federated(InProcessGrid(4), cfg, None)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((run / "summary.json").read_text()) | {"rows": json.loads((run / "metrics.json").read_text())}


def test_a_tiny_central_run_reports_its_epsilon(tmp_path):
    summary = _private_run(tmp_path, "federation.privacy.mode=central", "federation.privacy.target_epsilon=50")
    privacy = summary["privacy"]
    assert privacy["releases"] == 4  # 3 mask rounds + 1 fine-tune round, each aggregated
    assert 0 < privacy["epsilon"] <= 50 and privacy["noise_multiplier"] > 0
    assert summary["rejected_replies"] == 0 and summary["student"]["target_acc"] is not None
    per_round = [r["epsilon"] for r in summary["rows"] if r.get("epsilon") is not None]
    assert len(per_round) == 4 and per_round[0] < per_round[-1]  # every release logged, the budget grows
    assert per_round[-1] == pytest.approx(privacy["epsilon"], abs=1e-3)  # the summary reports what was spent


def test_local_noise_stays_within_what_the_server_accepts_and_the_budget_stops_training(tmp_path):
    local = _private_run(
        tmp_path / "local", "federation.privacy.mode=local", "federation.privacy.noise_multiplier=0.05"
    )
    assert local["rejected_replies"] == 0 and local["privacy"]["releases"] >= 1  # noised replies pass validation
    one_round = epsilon_after("central", 0.05, 1, 3, 4, 0.25)
    stopped = _private_run(
        tmp_path / "stop",
        "federation.privacy.mode=central",
        "federation.privacy.noise_multiplier=0.05",
        f"federation.privacy.max_epsilon={one_round * 1.5}",
    )
    assert stopped["privacy"]["releases"] == 1 and stopped["privacy"]["stopped_before_round"] == 2
    assert [r["round"] for r in stopped["rows"] if r["phase"] in ("mask", "finetune")] == [1]


def test_os_noise_also_draws_each_rounds_sample_from_the_os():
    from strategies.fedadmp import FedKD
    from strategies.fleet import Delivery, Fleet, RoundPolicy

    def fleet(noise: str) -> FedKD:
        spec = PrivacySpec(mode="central", noise_multiplier=1.0, noise=noise)
        f = Fleet({d: 100 + d for d in range(1000)}, 0, Delivery(None, ""), {})  # type: ignore[arg-type]
        f.privacy = Privacy(spec, population=1000, sample=5, planned_rounds=1, seed=0)
        return FedKD(weights={}, keep=None, fleet=f, policy=RoundPolicy(5))

    seeded = fleet("seeded")
    assert seeded.sample(1, 5) == seeded.sample(1, 5)  # a study: the same sample from the root seed
    secret = fleet("os")
    assert secret.sample(1, 5) != secret.sample(1, 5)  # 1 in C(1000, 5) to repeat


def test_central_noise_on_the_mean_is_z_clip_over_the_replies():
    privacy = Privacy(
        PrivacySpec(mode="central", clip=1.0, noise_multiplier=1.0), population=10, sample=2, planned_rounds=1, seed=0
    )
    reference = {"w": {"x": torch.zeros(20000)}}
    out = privacy.release(1, [reference, reference], reference)  # nothing moved: noise only
    assert abs(float(out["w"]["x"].std()) - 0.5) < 0.02  # z clip / 2 replies


def test_what_leaves_a_device_in_local_mode_is_clipped_noised_and_valid():
    from flwr.app import RecordDict

    from clients.privacy import Noise, privatise
    from strategies import protocol as P

    sent = RecordDict({P.ARRAYS: P.to_record({"bn.weight": torch.ones(4), "conv.weight": torch.ones(3)})})
    stats = {"mean-prediction": torch.tensor([0.7, 0.3])}
    reply = RecordDict(
        {
            P.ARRAYS: P.to_record({"bn.weight": torch.full((4,), 4.0), "conv.weight": torch.ones(3)}),
            P.STATS: P.to_record(stats),
            P.METRICS: P.metrics_record({P.NUM_EXAMPLES: 10}),
        }
    )
    privatise(sent, reply, Noise(clip=1.0, z=0.01, generator=torch.Generator().manual_seed(0), modules=["bn"]), 0.0)
    arrays = P.from_record(P.array_record(reply, P.ARRAYS))
    moved = float((arrays["bn.weight"] - 1).norm())
    assert 0.6 < moved < 0.8  # (3, 3, 3, 3) clipped to 1 / sqrt(2 parts) = 0.71, plus a little noise
    assert torch.equal(arrays["conv.weight"], torch.ones(3))  # not a trained layer: not released
    p = P.from_record(P.array_record(reply, P.STATS))["mean-prediction"]
    assert abs(float(p.sum()) - 1) < 1e-6 and float(p.min()) >= 0


def test_a_resumed_private_run_must_keep_its_privacy_model():
    spec = PrivacySpec(mode="central", noise_multiplier=1.0)
    first = Privacy(spec, population=10, sample=2, planned_rounds=3, seed=0)
    first.releases = 2
    again = Privacy(spec, population=10, sample=2, planned_rounds=3, seed=0)
    again.load_state_dict(first.state_dict())
    assert again.releases == 2 and again.epsilon() == first.epsilon()
    other = Privacy(
        PrivacySpec(mode="central", noise_multiplier=2.0), population=10, sample=2, planned_rounds=3, seed=0
    )
    with pytest.raises(ConfigError, match="released under"):
        other.load_state_dict(first.state_dict())
    with pytest.raises(ConfigError, match="no one to hide among"):
        Privacy(spec, population=1, sample=1, planned_rounds=1, seed=0)


def test_private_runs_sample_k_of_n_and_train_only_normalisation_layers():
    from admp.models import build_model
    from admp.trainer import trained_parameters

    with pytest.raises(ConfigError, match="under-count"):
        config_from_overrides(
            [
                "federation.privacy.mode=central",
                "federation.privacy.noise_multiplier=1",
                "federation.profiles.availability=random",
                "federation.profiles.availability_p=0.5",
            ]
        )
    cfg = config_from_overrides(["federation.privacy.mode=central", "federation.privacy.noise_multiplier=1"])
    assert cfg.admp.trainable == "norm" and config_from_overrides([]).admp.trainable == "all"
    model = build_model("lenet", 10)
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert norms and {id(p) for p in trained_parameters(model, cfg.admp)} == norms
