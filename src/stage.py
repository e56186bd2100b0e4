"""Run one pipeline stage from the code beside this file: `python src/stage.py NAME [ARGS...]`.

dvc.yaml runs every stage through this file. Python puts a script's own folder first on
sys.path, so the stage imports `chimuffin` from this checkout's src/: the code DVC hashed as the
stage's deps, also in the temporary copy of the repository that `dvc exp run --queue` runs in.
(`python -m chimuffin.stages.NAME` imports whichever checkout the environment's install points
at, so a queued experiment that changes code would run the workspace's code instead.)
"""

import runpy
import sys
from pathlib import Path

STAGES = Path(__file__).resolve().parent / "chimuffin" / "stages"


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if not name.isidentifier() or name == "common" or not (STAGES / f"{name}.py").is_file():
        known = sorted(p.stem for p in STAGES.glob("*.py") if p.stem not in ("__init__", "common"))
        sys.exit(f"usage: python src/stage.py STAGE [ARGS...]; STAGE is one of {', '.join(known)}")
    del sys.argv[1]
    runpy.run_module(f"chimuffin.stages.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
