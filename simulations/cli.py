"""The ``fedadmp`` command line: subcommands for each kind of run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from admp_data.sources import DataError
from admp_device.infer import InputError
from simulations.api import SCENARIOS
from simulations.device_commands import add_device_commands

DEFAULT_CENTRALIZED = SCENARIOS / "centralized_digits.yaml"
DEFAULT_FEDERATED = SCENARIOS / "federated_digits.yaml"


def _say_start(path: str | None, overrides: list[str], default: Path) -> None:
    """Without a scenario file, say which config the run starts from (see ``simulations.api.scenario_config``)."""
    if path is None:
        named = any(o.partition("=")[0].strip() == "data.dataset" for o in overrides)
        start = "the built-in defaults with your --set keys" if named else f"the demo scenario {default.name}"
        print(f"no scenario file: {start}", file=sys.stderr)


def _centralized(args: argparse.Namespace) -> int:
    from simulations import api

    _say_start(args.scenario, args.set, DEFAULT_CENTRALIZED)
    api.centralized(args.scenario, args.set)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from simulations import api

    if not args.resume:
        _say_start(args.scenario, args.set, DEFAULT_FEDERATED)
    api.simulate(args.scenario, args.set, resume=args.resume, verbose=args.verbose)
    return 0


def _show(args: argparse.Namespace) -> int:
    from simulations.show import print_run

    print_run(Path(args.run_dir), rows=args.rows)
    return 0


def _study(args: argparse.Namespace) -> int:
    from simulations.study import run_study

    run_study(args.study)
    return 0


def _transplant(args: argparse.Namespace) -> int:
    from simulations.transplant import run_transplant

    table = run_transplant(args.scenario, args.task, args.ratio, args.seeds, Path(args.out).resolve(), args.set)
    print(f"table: {table}")
    return 0


def _add_transplant(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedadmp transplant``: the mask-transplant ablation (simulations/transplant.py)."""
    tp = sub.add_parser(
        "transplant",
        help="mask-transplant ablation: whose keep set, whose training (where FedADMP loses to naive)",
        description="Per seed: naive, FedADMP from ones, each one's keep set under the other's training, and "
        "FedADMP from the L1 keep set; resumable; writes transplant.csv and transplant.md.",
    )
    tp.add_argument("scenario", help="scenario YAML")
    tp.add_argument("--task", required=True, help="the task's name in the table and run names")
    tp.add_argument("--ratio", type=float, default=0.9, help="pruning ratio p (default 0.9)")
    tp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="root seeds (default 0 1 2)")
    tp.add_argument("--out", default="results/diagnosis", help="output folder (default results/diagnosis)")
    tp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tp.set_defaults(func=_transplant)


def _fleet(argv: list[str]) -> int:
    from deploy.fleet import main as fleet_main

    return fleet_main(argv, prog="fedadmp fleet")


def _add_fleet(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedadmp fleet up|run|down|status|env ...``: the deployment kit (``deploy/fleet.py``), whose own
    parser reads the rest of the line (``main`` hands it over; ``fedadmp fleet up -h`` shows its options)."""
    fleet = sub.add_parser(
        "fleet",
        help="a real Flower SuperLink and SuperNodes: up, run, down, status, env (fedadmp fleet -h)",
        description="The deployment kit: start a SuperLink and one SuperNode per device (TLS, node "
        "authentication), run the app on them, stop them.",
        add_help=False,
    )
    fleet.add_argument("fleet_args", nargs=argparse.REMAINDER, help="up | run | down | status | env, and options")


def _version() -> str:
    """The installed package's version (pyproject.toml's, through the package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedadmp")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with one subcommand per run type."""
    parser = argparse.ArgumentParser(
        prog="fedadmp",
        description="Unsupervised cross-domain compression (ADMP) for device fleets.",
    )
    parser.add_argument("--version", action="version", version=f"fedadmp {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_runs(sub)
    _add_reading(sub)
    _add_transplant(sub)
    add_device_commands(sub)
    _add_fleet(sub)
    return parser


def _add_runs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``centralized`` and ``simulate``: a scenario (or the defaults), overrides, resume."""
    cen = sub.add_parser(
        "centralized",
        help="ADMP on pooled unlabeled target data (no federation)",
        description="Train the teacher on labeled source data, run ADMP on the pooled "
        "unlabeled target data, prune, fine-tune, evaluate and export.",
    )
    cen.add_argument(
        "scenario",
        nargs="?",
        default=None,
        help=f"scenario YAML (default: {DEFAULT_CENTRALIZED.name}, or the built-in defaults with --set data.dataset)",
    )
    cen.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set admp.prune_ratio=0.5 (repeatable)",
    )
    cen.set_defaults(func=_centralized)
    sim = sub.add_parser(
        "simulate",
        help="federated ADMP on Flower's Simulation Engine (Ray)",
        description="Teacher on the server, one virtual device per target partition; "
        "mask phase, merge, fine-tune, BN recalibration, export.",
    )
    sim.add_argument(
        "scenario",
        nargs="?",
        default=None,
        help=f"scenario YAML (default: {DEFAULT_FEDERATED.name}, or the built-in defaults with --set data.dataset)",
    )
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set federation.mask_rounds=4 (repeatable)",
    )
    sim.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    sim.set_defaults(func=_simulate)


def _add_reading(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``study`` (a grid of runs and its report) and ``show`` (a finished run)."""
    study = sub.add_parser(
        "study",
        help="every method on the same splits, seeds and budget; tables and plots",
        description="Run (or resume: finished runs are skipped) a study of tasks x methods x "
        "pruning ratios x seeds; writes runs.csv, report.md and PNG plots.",
    )
    study.add_argument("study", help="study YAML (see studies/)")
    study.set_defaults(func=_study)
    show = sub.add_parser(
        "show",
        help="a finished run's summary and per-round table",
        description="Print a finished run directory's summary (teacher vs student) and its per-round metrics.",
    )
    show.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (with summary.json)")
    show.add_argument("--rows", type=int, default=40, help="the last ROWS metrics rows (default 40; 0: all)")
    show.set_defaults(func=_show)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedadmp`` console script; config, data and device-input errors exit with code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fleet"]:  # the kit's own parser reads the rest, -h included
        return _fleet(argv[1:])
    args = build_parser().parse_args(argv)
    from admp_config.base import ConfigError

    try:
        command: Callable[[argparse.Namespace], int] = args.func
        return command(args)
    except (ConfigError, DataError, InputError) as exc:
        print(f"fedadmp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
