"""What every stage entry point shares: argument parsing, params, and how it fails."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from chimuffin import paths
from chimuffin.config import Params, load_params
from chimuffin.errors import UserError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default=paths.PARAMS, help="params file (default %(default)s)")
    return p


def stage_name(main: Callable) -> str:
    """`train` for chimuffin.stages.train, also when run as `python -m` (module __main__)."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py")
    return module.rsplit(".", 1)[-1]


def run(main: Callable[[argparse.Namespace, Params], None], args: argparse.Namespace) -> None:
    """Run a stage: a user error is one clear line and exit 2, Ctrl-C a line and exit 130.

    Outputs are written atomically, so an interrupted stage leaves no partial file behind."""
    name = stage_name(main)
    code = 0
    try:
        main(args, load_params(args.params))
    except UserError as e:
        print(f"chimuffin {name}: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"chimuffin {name}: interrupted; no partial outputs were written", file=sys.stderr)
        code = 130
    if code:
        # Leave without interpreter teardown: a process that exits within a few milliseconds
        # of reading a parquet file (as a stage stopping on bad input does) is aborted by
        # pyarrow 17's still-busy threads ("terminate called without an active exception",
        # exit 134) in about 1 run of 6 here (apache/arrow#34314). Everything the stage wrote
        # is already closed, and its temporaries were removed on the way out of main.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
