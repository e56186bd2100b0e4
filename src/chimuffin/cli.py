"""`chimuffin ...`: the tools around the pipeline. Stages run through `dvc repro`."""

from __future__ import annotations

import argparse
import sys

from chimuffin.errors import UserError

# Each module registers its subcommand; keep this list sorted.
COMMANDS = ["dashboard", "export", "labels", "loop", "predict", "pull_3lc", "review"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="chimuffin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"chimuffin.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"chimuffin {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"chimuffin {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
