"""``fedadmp fleet``: the deployment kit as a subcommand, and the Flower app an installed wheel runs
(its declaration must stay the source tree's). No process is started here: the fleet itself runs in
tests/deploy/test_deploy_kit.py (make test-deployment)."""

import json

import pytest

from deploy import spec
from simulations.cli import main

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_the_installed_app_declares_what_the_source_tree_declares():
    source = tomllib.loads((spec.ROOT / "pyproject.toml").read_text())
    shipped = tomllib.loads((spec.ROOT / "deploy" / "flower_app.toml").read_text())
    assert shipped["tool"]["flwr"]["app"] == source["tool"]["flwr"]["app"]
    assert (shipped["project"]["name"], shipped["project"]["version"]) == (
        source["project"]["name"],
        source["project"]["version"],
    )


def test_without_a_source_tree_the_app_folder_is_written_into_the_workdir(tmp_path, monkeypatch):
    assert spec.app_dir(tmp_path) == spec.ROOT  # the source tree: its pyproject.toml declares the app
    monkeypatch.setattr(spec, "ROOT", tmp_path / "site-packages")  # an installed wheel: no pyproject.toml
    app = spec.app_dir(tmp_path / "fleet")
    assert app == tmp_path / "fleet" / "app"
    written = tomllib.loads((app / "pyproject.toml").read_text())
    assert written["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "server.app:app",
        "clientapp": "clients.entry:app",
    }


def test_fleet_is_a_subcommand_with_its_own_options(tmp_path, capsys):
    assert main(["fleet", "status", "--workdir", str(tmp_path)]) == 1  # nothing runs there
    assert json.loads(capsys.readouterr().out)["status"] is None
    with pytest.raises(SystemExit) as exit_info:
        main(["fleet", "up", "-h"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: fedadmp fleet up") and "--tls" in printed and "--devices" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["fleet"])
    assert exit_info.value.code == 2
