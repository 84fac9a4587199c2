"""The ``fedadmp`` command line: subcommands for each kind of run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from admp.data.sources import DataError

DEFAULT_CENTRALIZED = Path(__file__).parent / "scenarios" / "centralized_digits.yaml"


def _centralized(args: argparse.Namespace) -> int:
    from simulations.centralized import run_centralized
    from admp.config import load_config

    cfg = load_config(args.config, overrides=args.set)
    run_centralized(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with one subcommand per run type."""
    parser = argparse.ArgumentParser(
        prog="fedadmp",
        description="Unsupervised cross-domain compression (ADMP) for device fleets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cen = sub.add_parser("centralized", help="ADMP on pooled unlabeled target data (no federation)",
                         description="Train the teacher on labeled source data, run ADMP on the pooled "
                                     "unlabeled target data, prune, fine-tune, evaluate and export.")
    cen.add_argument("--config", default=str(DEFAULT_CENTRALIZED),
                     help=f"scenario YAML (default: {DEFAULT_CENTRALIZED.name})")
    cen.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set admp.prune_ratio=0.5 (repeatable)")
    cen.set_defaults(func=_centralized)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedadmp`` console script; config and data errors exit with code 2."""
    args = build_parser().parse_args(argv)
    from admp.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"fedadmp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
