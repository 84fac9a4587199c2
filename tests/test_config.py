import pytest

from simulations.cli import main
from admp.config import ScenarioConfig, ConfigError, load_config, to_yaml


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_missing_keys(tmp_path):
    cfg = load_config(_write(tmp_path, "admp:\n  prune_ratio: 0.5\n"))
    assert cfg.admp.prune_ratio == 0.5
    assert cfg.admp.tau == ScenarioConfig().admp.tau
    assert "prune_ratio: 0.5" in to_yaml(cfg)


@pytest.mark.parametrize("text,needle", [
    ("admp:\n  prune_ratoi: 0.5\n", "unknown key 'admp.prune_ratoi'"),
    ("bogus: 1\n", "unknown key 'bogus'"),
    ("admp:\n  prune_ratio: high\n", "admp.prune_ratio: expected a number"),
    ("teacher:\n  epochs: 2.5\n", "teacher.epochs: expected an integer"),
    ("admp:\n  adversary: 1\n", "admp.adversary: expected true/false"),
    ("admp:\n  prune_ratio: 1.0\n", "admp.prune_ratio: 1.0 is out of range [0, 1)"),
    ("admp:\n  tau: 0\n", "admp.tau: 0.0 is out of range (0, inf]"),
    ("data:\n  dataset: cifar\n", "data.dataset: 'cifar' is not one of"),
    ("data:\n  shift_kinds: [noise, fog]\n", "data.shift_kinds: 'fog' is not one of"),
    ("data:\n  dataset: hapt\n", "data.data_dir: required"),
    ("admp: 3\n", "admp: expected a mapping"),
    ("admp: [1\n", "not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert needle in str(err.value)


def test_overrides_apply_and_are_validated(tmp_path):
    path = _write(tmp_path, "run:\n  seed: 1\n")
    cfg = load_config(path, overrides=["run.seed=5", "admp.adversary=false"])
    assert cfg.run.seed == 5 and cfg.admp.adversary is False
    with pytest.raises(ConfigError, match="admp.rho_gamma: 0.5 is out of range"):
        load_config(path, overrides=["admp.rho_gamma=0.5"])


def test_cli_exits_2_with_one_clear_message(tmp_path, capsys):
    path = _write(tmp_path, "schedule:\n  mask_epochz: 3\n")
    assert main(["centralized", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'schedule.mask_epochz'" in err and "Traceback" not in err
    assert main(["centralized", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "centralized" in capsys.readouterr().out


@pytest.mark.parametrize("data,teacher_bn,inference_bn", [
    ("dataset: digits\n", "local", "local"),  # shifted devices: each one its own domain
    ("dataset: digits\n  shifts: never\n", "fleet", "global"),  # one domain over the fleet
    ("dataset: hapt\n  data_dir: /x\n  partition: subject\n", "local", "local"),  # a subject per device
    ("dataset: mnist_usps\n  data_dir: /x\n  partition: dirichlet\n", "fleet", "global"),  # label skew only
])
def test_auto_bn_modes_follow_the_fleet_structure(tmp_path, data, teacher_bn, inference_bn):
    cfg = load_config(_write(tmp_path, f"data:\n  {data}"))
    assert (cfg.admp.teacher_bn, cfg.federation.bn_recalibration) == (teacher_bn, inference_bn)
    explicit = load_config(_write(tmp_path, f"data:\n  {data}admp:\n  teacher_bn: source\n"))
    assert explicit.admp.teacher_bn == "source"  # an explicit mode is kept
