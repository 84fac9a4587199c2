import json

import pytest

from admp.models import ARCHITECTURES
from admp_config import choices
from admp_config.base import ConfigError, interval, parse_section
from admp_config.schema import ScenarioConfig, config_from_overrides, load_config, to_yaml
from admp_config.sections import AdmpHyper, DataSpec
from admp_data.tasks import DEFAULT_ARCH
from simulations.cli import DEFAULT_FEDERATED, main


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_missing_keys(tmp_path):
    cfg = load_config(_write(tmp_path, "admp:\n  prune_ratio: 0.5\n"))
    assert cfg.admp.prune_ratio == 0.5
    assert cfg.admp.tau == ScenarioConfig().admp.tau
    assert "prune_ratio: 0.5" in to_yaml(cfg)


@pytest.mark.parametrize(
    "text,needle",
    [
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
        ("admp: [1\n", "not valid YAML (line 2, column 1: expected ',' or ']', but got '<stream end>')"),
        ("a: b: c\n", "not valid YAML (line 1, column 5: mapping values are not allowed here)"),
        ("quantize:\n  bits: [4, 8]\n", "quantize.bits: [4, 8] steps up"),
        ("quantize:\n  budget_reduction: 50\n", "quantize.budget_bytes: needs quantize.bits"),
        ("quantize:\n  bits: [4]\n  budget_bytes: 9\n  budget_reduction: 5\n", "not both"),
        ("quantize:\n  bits: [1]\n", "quantize.bits[0]: 1 is out of range [2, 8]"),
        ("quantize:\n  method: gptq\n", "quantize.method: 'gptq' is not one of"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert needle in str(err.value) and "\n" not in str(err.value)  # one line


def test_overrides_apply_and_are_validated(tmp_path):
    path = _write(tmp_path, "run:\n  seed: 1\n")
    cfg = load_config(path, overrides=["run.seed=5", "admp.adversary=false"])
    assert cfg.run.seed == 5 and cfg.admp.adversary is False
    with pytest.raises(ConfigError, match=r"admp\.rho_gamma: 0\.5 is out of range"):
        load_config(path, overrides=["admp.rho_gamma=0.5"])


def test_cli_exits_2_with_one_clear_message(tmp_path, capsys):
    path = _write(tmp_path, "schedule:\n  mask_epochz: 3\n")
    assert main(["centralized", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'schedule.mask_epochz'" in err and "Traceback" not in err
    assert main(["centralized", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "centralized" in capsys.readouterr().out


@pytest.mark.parametrize(
    "data,teacher_bn,inference_bn",
    [
        ("dataset: digits\n", "local", "local"),  # shifted devices: each one its own domain
        ("dataset: digits\n  shifts: never\n", "fleet", "global"),  # one domain over the fleet
        ("dataset: hapt\n  data_dir: /x\n  partition: subject\n", "local", "local"),  # a subject per device
        ("dataset: mnist_usps\n  data_dir: /x\n  partition: dirichlet\n", "fleet", "global"),  # label skew only
    ],
)
def test_auto_bn_modes_follow_the_fleet_structure(tmp_path, data, teacher_bn, inference_bn):
    cfg = load_config(_write(tmp_path, f"data:\n  {data}"))
    assert (cfg.admp.teacher_bn, cfg.federation.bn_recalibration) == (teacher_bn, inference_bn)
    assert cfg.admp.centroids == ("device" if teacher_bn == "local" else "fleet")  # the same rule
    assert cfg.federation.self_training_rounds() == (0 if teacher_bn == "local" else 3)
    explicit = load_config(_write(tmp_path, f"data:\n  {data}admp:\n  teacher_bn: source\n"))
    assert explicit.admp.teacher_bn == "source"  # an explicit mode is kept


@pytest.mark.parametrize(
    "text,message",
    [
        ("admp:\n  prune_ratio: .nan\n", "admp.prune_ratio: nan is not a finite number"),
        ("federation:\n  round_timeout: .inf\n", "federation.round_timeout: inf is not a finite number"),
        ("model:\n  width: 9\n", "model.width: 9.0 is out of range (0, 8]"),
        ("data:\n  image_size: 4\n", "data.image_size: 4 is out of range [8, 512]"),
        ("data:\n  hapt_source_subjects: [1, x]\n", "data.hapt_source_subjects[1]: expected an integer, got str 'x'"),
        ("data:\n  severity_min: 5\n  severity_max: 3\n", "data.severity_min: must not exceed data.severity_max"),
        (
            "data:\n  dataset: imagefolder\n  data_dir: /x\n",
            "data.source_domain: imagefolder needs source_domain and target_domain",
        ),
        (
            "federation:\n  min_replies: 6\n  clients_per_round: 5\n",
            "federation.min_replies: 6 exceeds federation.clients_per_round (5): every round would be discarded",
        ),
        (
            "federation:\n  mask_rounds: 1\n  warmup_rounds: 2\n",
            "federation.warmup_rounds: 2 is not below federation.mask_rounds (1): the first Z-step ends "
            "round warmup_rounds + 1, so none would run",
        ),
        (
            "schedule:\n  mask_epochs: 2\n  warmup_epochs: 3\n",
            "schedule.warmup_epochs: 3 exceeds schedule.mask_epochs (2), "
            "which include the warm-up: no Z-step would run",
        ),
        (
            "federation:\n  robust:\n    aggregation: average\n",
            "federation.robust.aggregation: 'average' is not one of auto, mean, clip, median",
        ),
        (
            "federation:\n  robust:\n    trim_fraction: 0.5\n",
            "federation.robust.trim_fraction: 0.5 is out of range [0, 0.5)",
        ),
        ("federation:\n  aggregation: mean\n", "unknown key 'federation.aggregation'"),
        ("federation:\n  faults:\n    crash: 1.5\n", "federation.faults.crash: 1.5 is out of range [0, 1)"),
        (
            "admp:\n  tau: x\n  prune_ratoi: 1\n",
            "unknown key 'admp.prune_ratoi' (known keys in admp: prune_ratio, lr, ",
        ),
    ],
)
def test_errors_are_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_an_empty_or_non_utf8_config_file_is_one_error(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml: empty config file"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "latin.yaml").write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text"):
        load_config(tmp_path / "latin.yaml")


def test_cross_field_checks_spare_other_strategies_and_empty_sections(tmp_path):
    cfg = load_config(_write(tmp_path, "admp:\nfederation:\n  strategy: fedkd\n  mask_rounds: 0\n"))
    auto = {k: getattr(cfg.admp, k) for k in ("teacher_bn", "centroids", "trainable", "merge_recovery")}
    assert cfg.admp == AdmpHyper(**auto) and cfg.admp.trainable == "all"  # auto resolved (no privacy: all)
    assert cfg.federation.mask_rounds == 0


def test_range_messages_come_from_each_fields_constraints():
    bounds = {name: interval(info.metadata) for name, info in AdmpHyper.model_fields.items() if info.metadata}
    assert bounds["prune_ratio"] == "[0, 1)" and bounds["tau"] == "(0, inf]" and bounds["rho_gamma"] == "[1, inf]"
    assert "adversary" not in bounds and "teacher_bn" not in bounds


def test_yaml_round_trip_and_json_sections(tmp_path):
    cfg = load_config(DEFAULT_FEDERATED, overrides=["admp.finetune_lr=0.02"])
    again = load_config(_write(tmp_path, to_yaml(cfg)))
    assert again == cfg and again.admp.finetune_lr == 0.02
    hp = parse_section(AdmpHyper, json.loads(json.dumps(cfg.admp.model_dump())), "admp.")
    assert hp == cfg.admp
    spec = parse_section(DataSpec, json.loads(json.dumps(cfg.data.model_dump())), "data.")
    assert spec == cfg.data and spec.devices_are_domains()
    with pytest.raises(ConfigError, match=r"^data\.num_devices: 0 is out of range \[1, inf\]$"):
        parse_section(DataSpec, {"num_devices": 0}, "data.")


def test_config_from_overrides_starts_from_the_defaults():
    cfg = config_from_overrides(["admp.prune_ratio=0.3", "federation.clients_per_round=2"])
    assert isinstance(cfg, ScenarioConfig) and cfg.admp.prune_ratio == 0.3
    assert cfg.admp.teacher_bn == "local"  # auto resolved: the default digits devices carry their own shifts
    with pytest.raises(ConfigError, match=r"federation\.min_replies: 3 exceeds"):
        config_from_overrides(["federation.min_replies=3", "federation.clients_per_round=2"])
    # warm-up 2 of 2 mask rounds: the first Z-step would end round 3, which never comes
    with pytest.raises(ConfigError, match=r"federation\.warmup_rounds: 2 is not below federation\.mask_rounds \(2\)"):
        config_from_overrides(["federation.mask_rounds=2", "federation.warmup_rounds=2"])
    assert (
        config_from_overrides(
            ["federation.mask_rounds=2", "federation.warmup_rounds=2", "federation.strategy=fedkd"]
        ).federation.mask_rounds
        == 2
    )  # no Z-steps in fedkd


def test_one_choice_list_for_config_and_code():
    assert set(DEFAULT_ARCH) | {"npz"} == set(choices.DATASETS) and set(ARCHITECTURES) == set(choices.ARCHS)
    assert DataSpec.model_fields["dataset"].annotation is choices.Dataset
    with pytest.raises(ConfigError, match=r"model\.arch: 'vgg' is not one of auto, lenet, resnet, cnn1d, mlp"):
        config_from_overrides(["model.arch=vgg"])


def test_the_default_aggregation_is_the_trimmed_mean_unless_dp_or_secagg_need_the_mean():
    """auto (studies/aggregation.yaml's rule): trimmed_mean; mean under DP or SecAgg+; a choice stays."""
    assert config_from_overrides([]).federation.robust.aggregation == "trimmed_mean"
    private = ["federation.privacy.mode=central", "federation.privacy.target_epsilon=8"]
    assert config_from_overrides(private).federation.robust.aggregation == "mean"
    secure = ["federation.secure_aggregation.enabled=true", "federation.clients_per_round=3"]
    assert config_from_overrides(secure).federation.robust.aggregation == "mean"
    assert config_from_overrides(["federation.robust.aggregation=clip"]).federation.robust.aggregation == "clip"
