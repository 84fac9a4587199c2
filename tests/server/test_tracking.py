"""The optional TensorBoard log (run.tensorboard): which numbers become scalars, and the config check."""

import importlib.util

import pytest

from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from server.tracking import scalars


def test_finite_numbers_become_key_per_phase_and_counters_do_not():
    row = {
        "phase": "mask",
        "step": 3,
        "round": 3,
        "target_acc": 91.5,
        "valid_replies": 4,
        "ok": True,
        "rho": float("nan"),
        "note": "x",
        "rejections": [1],
    }
    assert scalars(row) == {"target_acc/mask": 91.5, "valid_replies/mask": 4.0}


def test_tensorboard_without_the_package_is_refused_by_the_config(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"run\.tensorboard: .*tracking"):
        config_from_overrides(["run.tensorboard=true"])
    assert config_from_overrides(["run.tensorboard=false"]).run.tensorboard is False
