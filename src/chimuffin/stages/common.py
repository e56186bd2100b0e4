"""What every stage entry point shares: argument parsing, params, and how it fails."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from chimuffin.config import Params, load_params
from chimuffin.errors import UserError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    return p


def run(main: Callable[[argparse.Namespace, Params], None], args: argparse.Namespace) -> None:
    """Run a stage: a user error is one clear line and exit 2, Ctrl-C a line and exit 130.

    Outputs are written atomically, so an interrupted stage leaves no partial file behind."""
    name = main.__module__.rsplit(".", 1)[-1]
    try:
        main(args, load_params(args.params))
    except UserError as e:
        print(f"chimuffin {name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"chimuffin {name}: interrupted; no partial outputs were written", file=sys.stderr)
        sys.exit(130)
