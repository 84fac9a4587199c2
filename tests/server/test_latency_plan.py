"""A run with admp.latency_budget plans its per-group ratios once (before any round), prunes to them,
records the plan beside its exported model's latency, and a resumed run reads the plan back."""

import json

import pytest
import yaml

from admp.masks import group_sizes
from admp.models import groups_of
from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from admp_export import latency
from server.app import run_federated
from tests.inprocess_grid import InProcessGrid
from tests.server.test_server import TINY, _run, _summary

pytestmark = pytest.mark.usefixtures("flower_task")


def test_the_plan_is_made_once_kept_in_the_config_and_read_back_on_resume(tmp_path, monkeypatch):
    def fake_ms(model, folder, repeats):  # conv1 dominates: the plan cuts it first
        sizes = group_sizes(model, groups_of(model))
        return 10.0 * sizes["conv1"] + sizes["conv2"], 100.0 * sizes["conv1"] + 20.0 * sizes["conv2"]

    monkeypatch.setattr(latency, "measured_ms", fake_ms)
    extra = ["admp.latency_budget=0.75", "federation.strategy=naive"]
    paused = _run(tmp_path, *extra, "federation.stop_after_round=2")
    plan = json.loads((paused / "latency_plan.json").read_text())
    config = yaml.safe_load((paused / "config.yaml").read_text())
    assert config["admp"]["group_ratios"] == pytest.approx(plan["ratios"])  # what a resume reads
    # LeNet at width 0.5 (16, 32 channels), budget (144, 1680): uniform p = 0.25 keeps (12, 24) = the floors;
    # conv1's cuts save the most per cost until its floor, then conv2's
    assert plan["counts"] == {"conv1": 12, "conv2": 24} and plan["uniform_ratio"] == 0.25

    def no_search(*args):
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(latency, "measured_ms", no_search)
    cfg = config_from_overrides([*TINY, *extra, f"run.out_dir={tmp_path}", f"admp.group_ratios={plan['ratios']}"])
    run_federated(InProcessGrid(4), cfg, str(paused))
    summary = _summary(paused)
    assert summary["student"]["channels"] == plan["counts"]
    assert summary["latency_plan"]["budget_ms"] == plan["budget_ms"] and "met" in summary["latency_plan"]
    assert set(summary["latency_plan"]["exported_ms"]) == {"batch_1", "batch_64"}


def test_group_ratios_must_name_the_models_groups(tmp_path):
    with pytest.raises(ConfigError, match=r"admp\.group_ratios: names"):
        _run(tmp_path, "admp.group_ratios={conv1: 0.5}")
