"""`chimuffin ...`: the tools around the pipeline. Stages run through `dvc repro`; `chimuffin
COMMAND --help` describes each command and its options."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from chimuffin.errors import UserError

# Each module registers its subcommand; keep this list sorted.
COMMANDS = ["check_data", "dashboard", "export", "final", "loop", "plots_template",
            "predict", "pull_3lc", "review"]


def version() -> str:
    """The installed package's version (pyproject.toml), as pip sees it."""
    try:
        return metadata.version("chimuffin")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .`)"


def describe_commands(sub: argparse._SubParsersAction) -> None:
    """A command registered without a description gets its one-line help as one, so
    `chimuffin COMMAND --help` always says what the command does; descriptions (module
    docstrings) keep their paragraphs."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, parser in sub.choices.items():
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        if not parser.description and helps.get(name):
            text = helps[name]
            parser.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="chimuffin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"chimuffin.commands.{name}").register(sub)
    describe_commands(sub)
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
