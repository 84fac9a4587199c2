"""The device-side subcommands of ``fedadmp``: ``adapt-bn`` (the device's BN step on its own unlabeled
data), ``infer`` and ``quantize`` (ONNX Runtime), and ``export-npz`` (a scenario's device data as the
files a real device would hold). Every argument is checked before any work (``InputError``)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from admp_data.sources import DataError
from admp_device import infer as device_infer
from admp_device.infer import InputError, check_output_path, open_session


def _adapt_bn(args: argparse.Namespace) -> int:
    from admp.models import example_input
    from admp_export.bundle import adapt_bn, bundle_weight_bits, load_bundle, read_local_inputs
    from admp_export.formats import export_onnx
    from admp_export.integer import export_integer

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
    adapted, bits = adapt_bn(model, x), bundle_weight_bits(args.bundle)
    if bits:  # the run's integer artefact: BN folds into the codes' scales, the codes stay exact
        with tempfile.TemporaryDirectory() as tmp:
            export_integer(adapted, bits, Path(tmp) / "adapted.onnx", out)
    else:
        out = export_onnx(adapted, example_input(model), out)
    _copy_contract(Path(args.bundle).with_name("pruned_model.onnx"), out, device_step="done")
    print(f"adapted BatchNorm statistics on {len(x)} local samples -> {out}")
    return 0


def _check_range(model: Path, x: Any, data: Path) -> None:
    """The inputs against the contract next to ``model`` (value range, magnitude), where there is one."""
    from admp_device.infer import check_values, contract_path, read_contract

    if contract_path(model).is_file():
        check_values(x, read_contract(model), data)


def _copy_contract(source: Path, out: Path, **changes: str) -> None:
    """The contract of ``source`` (its own, or its run's ``pruned_model.json``) next to ``out``, changed."""
    from admp_device.infer import contract_path

    contract = contract_path(source)
    if contract.is_file():
        terms = json.loads(contract.read_text(encoding="utf-8")) | {"model": out.name, **changes}
        out.with_suffix(".json").write_text(json.dumps(terms, indent=2), encoding="utf-8")


def _quantize(args: argparse.Namespace) -> int:
    from admp_export.bundle import quantize_int8, read_local_inputs

    source, out = Path(args.model), Path(args.out)
    check_output_path(out)
    if args.weights:
        return _quantize_weights(source, out, args.weights)
    if not args.data:
        raise InputError("--data: static int8 quantization calibrates on local inputs (or give --weights BITS)")
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


def _quantize_weights(source: Path, out: Path, bits: int) -> int:
    """Weight-only post-training quantization (``admp_export.integer``): no data, activations float32."""
    from admp_export.integer import to_integer_onnx

    if not 2 <= bits <= 8:
        raise InputError(f"--weights: {bits} bits; weight codes take 2 to 8 bits")
    open_session(source)  # a missing or unloadable model is named before any work
    try:
        stored = to_integer_onnx(source, out, bits)
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from None
    _copy_contract(source, out, weights=str(stored["weights"]))
    kb = int(stored["tensor_bytes"]) / 1e3  # type: ignore[call-overload]
    print(f"{bits}-bit weights (no calibration data) -> {out} ({kb:.1f} kB of tensors)")
    return 0


def _infer(args: argparse.Namespace) -> int:
    return device_infer.infer(args)


def _export_npz(args: argparse.Namespace) -> int:
    from admp_config.schema import load_config
    from admp_data.npz import write_npz
    from admp_data.tasks import load_domains

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
        "'python admp_device/infer.py' (one file, no torch needed).",
    )
    device_infer.add_arguments(infer)
    infer.set_defaults(func=_infer)
    quant = sub.add_parser(
        "quantize",
        help="device-side integer copy of an ONNX model: static int8 (calibrated) or weight-only (--weights)",
        description="Static int8 quantization (QDQ, per-channel weights) of pruned_model.onnx or a device's "
        "adapted model, activation ranges calibrated on the device's unlabeled inputs (npz array); or, with "
        "--weights BITS, weight-only integer codes (int8 / int4 / int2, per channel) with float activations.",
    )
    quant.add_argument("model", help="an ONNX model (pruned_model.onnx or the output of adapt-bn)")
    quant.add_argument("--data", help="npz file with the device's unlabeled inputs (static int8)")
    quant.add_argument("--weights", type=int, default=0, metavar="BITS", help="weight-only codes of BITS (2-8)")
    quant.add_argument("--key", default="x", help="array name in the npz (default: x)")
    quant.add_argument("--out", default="model_int8.onnx", help="where to write the int8 model")
    quant.set_defaults(func=_quantize)


def add_device_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``adapt-bn``, ``infer``, ``quantize`` and ``export-npz``."""
    _add_adapt_bn(sub)
    _add_device_tools(sub)
    _add_export_npz(sub)
