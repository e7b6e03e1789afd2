"""The ``ahnet`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import AhnetError


def _summary(args: argparse.Namespace) -> int:
    from .summary import summary_json, summary_text

    print(json.dumps(summary_json(), indent=2) if args.json else summary_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ahnet", description="3D Anisotropic Hybrid Network (AH-Net) toolkit")
    parser.add_argument("--version", action="version", version=f"ahnet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    summary = commands.add_parser("summary", help="conv layers and parameters of every network (Table 2)")
    summary.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    summary.set_defaults(run=_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except AhnetError as err:
        print(f"ahnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
