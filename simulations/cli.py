"""The ``fedadmp`` command line: subcommands for each kind of run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from admp import onnx_infer
from admp.data.sources import DataError
from admp.onnx_infer import InputError, check_output_path, open_session
from simulations.api import SCENARIOS

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


def _adapt_bn(args: argparse.Namespace) -> int:
    from admp.deploy import adapt_bn, load_bundle, read_local_inputs
    from admp.models import example_input
    from admp.surgery import export_onnx

    out = Path(args.out)
    check_output_path(out)
    model = load_bundle(args.bundle)
    x = read_local_inputs(args.data, args.key)
    expected = tuple(example_input(model).shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise DataError(
            f"{args.data}: {args.key} has samples of shape {tuple(x.shape[1:])}, the model takes {expected}"
        )
    _check_range(Path(args.bundle).with_name("pruned_model.onnx"), x.numpy(), Path(args.data))
    out = export_onnx(adapt_bn(model, x), example_input(model), out)
    _copy_contract(Path(args.bundle).with_name("pruned_model.onnx"), out, device_step="done")
    print(f"adapted BatchNorm statistics on {len(x)} local samples -> {out}")
    return 0


def _check_range(model: Path, x: Any, data: Path) -> None:
    """The inputs against the contract next to ``model`` (value range, magnitude), where there is one."""
    from admp.onnx_infer import check_values, contract_path, read_contract

    if contract_path(model).is_file():
        check_values(x, read_contract(model), data)


def _copy_contract(source: Path, out: Path, **changes: str) -> None:
    """The contract of ``source`` (its own, or its run's ``pruned_model.json``) next to ``out``, changed."""
    from admp.onnx_infer import contract_path

    contract = contract_path(source)
    if contract.is_file():
        terms = json.loads(contract.read_text(encoding="utf-8")) | {"model": out.name, **changes}
        out.with_suffix(".json").write_text(json.dumps(terms, indent=2), encoding="utf-8")


def _quantize(args: argparse.Namespace) -> int:
    from admp.deploy import quantize_int8, read_local_inputs

    source, out = Path(args.model), Path(args.out)
    check_output_path(out)
    session = open_session(source)
    x = read_local_inputs(args.data, args.key).numpy()
    expected = session.get_inputs()[0].shape[1:]
    if len(expected) != x.ndim - 1 or any(
        isinstance(d, int) and d != n for d, n in zip(expected, x.shape[1:], strict=False)
    ):
        raise DataError(
            f"{args.data}: {args.key} has samples of shape {tuple(x.shape[1:])}, the model takes {tuple(expected)}"
        )
    _check_range(source, x, Path(args.data))
    quantize_int8(source, out, x)
    _copy_contract(source, out, weights="int8 (ONNX Runtime static quantization, QDQ, per channel)")
    kb = out.stat().st_size / 1e3, source.stat().st_size / 1e3
    print(f"int8 model calibrated on {len(x)} local samples -> {out} ({kb[0]:.1f} kB, was {kb[1]:.1f} kB)")
    return 0


def _infer(args: argparse.Namespace) -> int:
    return onnx_infer.infer(args)


def _export_npz(args: argparse.Namespace) -> int:
    from admp.config import load_config
    from admp.data.npz import write_npz
    from admp.data.tasks import load_domains

    cfg = load_config(args.scenario, overrides=args.set)
    source, target, test, groups = load_domains(cfg.data, cfg.run.seed)
    out = write_npz(args.out, source, target, test, groups)
    print(
        f"{cfg.data.dataset}: {len(source)} source and {len(target)} target samples of shape "
        f"{tuple(source.x.shape[1:])}" + (f", {len(test)} target test" if test is not None else "") + f" -> {out}"
    )
    return 0


def _add_export_npz(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``export-npz`` subcommand."""
    export = sub.add_parser(
        "export-npz",
        help="write a scenario's dataset in the generic npz format (data.dataset: npz)",
        description="Read the data a scenario names (embedded digits, MNIST/USPS, HAPT, image folders) and write "
        "it as one npz file: x_source, y_source, x_target, y_target, and x_target_test/y_target_test or "
        "group_target where the dataset has them. A run with data.dataset=npz data.path=FILE then sees the same data.",
    )
    export.add_argument("scenario", help="scenario YAML")
    export.add_argument("--out", required=True, help="the npz file to write")
    export.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    export.set_defaults(func=_export_npz)


def _add_adapt_bn(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The device-side ``adapt-bn`` subcommand."""
    adapt = sub.add_parser(
        "adapt-bn",
        help="device-side step: re-estimate BN statistics on local unlabeled data, write the device's ONNX",
        description="Load a run's pruned_model.pt, re-estimate its BatchNorm statistics on this device's "
        "unlabeled inputs (an npz array of raw samples, as the model takes them) and export the adapted "
        "model to ONNX. Runs with federation.bn_recalibration: local report this model's accuracy.",
    )
    adapt.add_argument("bundle", help="pruned_model.pt of a run directory")
    adapt.add_argument("--data", required=True, help="npz file with the device's unlabeled inputs")
    adapt.add_argument("--key", default="x", help="array name in the npz (default: x)")
    adapt.add_argument("--out", default="adapted_model.onnx", help="where to write the adapted ONNX model")
    adapt.set_defaults(func=_adapt_bn)


def _add_device_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The device-side ``infer`` and ``quantize`` subcommands (``adapt-bn`` has its own)."""
    infer = sub.add_parser(
        "infer",
        help="device-side inference with an exported ONNX model (numpy + ONNX Runtime)",
        description="Predictions, accuracy where labels exist, latency. The same code runs on a device as "
        "'python onnx_infer.py' (admp/onnx_infer.py, no torch needed).",
    )
    onnx_infer.add_arguments(infer)
    infer.set_defaults(func=_infer)
    quant = sub.add_parser(
        "quantize",
        help="device-side int8 copy of an ONNX model, calibrated on local unlabeled data (ONNX Runtime)",
        description="Static int8 quantization (QDQ, per-channel weights) of pruned_model.onnx or a device's "
        "adapted model; activation ranges are calibrated on the device's unlabeled inputs (npz array).",
    )
    quant.add_argument("model", help="an ONNX model (pruned_model.onnx or the output of adapt-bn)")
    quant.add_argument("--data", required=True, help="npz file with the device's unlabeled inputs")
    quant.add_argument("--key", default="x", help="array name in the npz (default: x)")
    quant.add_argument("--out", default="model_int8.onnx", help="where to write the int8 model")
    quant.set_defaults(func=_quantize)


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
    _add_transplant(sub)
    _add_adapt_bn(sub)
    _add_device_tools(sub)
    _add_export_npz(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedadmp`` console script; config, data and device-input errors exit with code 2."""
    args = build_parser().parse_args(argv)
    from admp.config import ConfigError

    try:
        command: Callable[[argparse.Namespace], int] = args.func
        return command(args)
    except (ConfigError, DataError, InputError) as exc:
        print(f"fedadmp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
