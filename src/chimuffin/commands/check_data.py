"""`chimuffin check-data [DIR]`: find file and folder names that DVC cannot hash, before
`dvc repro`.

A name that is not valid UTF-8 (common in archives made on other systems) makes DVC fail while
hashing the dataset folder, before the prepare stage runs, with an error that names neither
the file nor a fix ("'utf-8' codec can't encode character '\\udce9' ... surrogates not
allowed"). This lists every such name with its bytes escaped, a suggested valid name and the
bash command that renames it. It reads names only and changes nothing.

Exit codes: 0 when every name is valid UTF-8, 2 when any is not (or DIR is missing).
"""

from __future__ import annotations

from pathlib import Path

from chimuffin import paths
from chimuffin.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("check-data", help="list file names in a dataset that DVC cannot hash "
                       "(not valid UTF-8) and how to rename them", description=__doc__)
    p.add_argument("data_dir", nargs="?", metavar="DIR",
                   help="dataset folder to check (default: prepare.data_dir in --params)")
    p.add_argument("--params", default=paths.PARAMS,
                   help="params file that names the dataset (default %(default)s)")
    p.set_defaults(func=run)


def default_dir(params_path: str) -> str:
    from chimuffin.config import load_params

    return load_params(params_path).prepare.data_dir


def report_lines(bad, root: str) -> list[str]:
    lines = [f"check-data: {len(bad)} name(s) under {root} are not valid UTF-8:"]
    for b in bad:
        lines.append(f"  {b.shown}  ->  rename to '{b.new_name}'")
    lines.append("rename them (bash; mv -n never overwrites), then run `dvc repro`:")
    lines += [f"  {b.mv_command()}" for b in bad]
    return lines


def run(args) -> int:
    from chimuffin.data.names import count_entries, find_bad_names

    root = args.data_dir or default_dir(args.params)
    if not Path(root).is_dir():
        raise UserError(f"{root}: no such folder (pass the dataset folder, or set "
                        "prepare.data_dir)")
    bad = find_bad_names(root)
    if not bad:
        print(f"check-data: {root}: all {count_entries(root)} file and folder names are valid "
              "UTF-8")
        return 0
    print("\n".join(report_lines(bad, root)))
    raise UserError(f"{root}: {len(bad)} name(s) are not valid UTF-8; DVC cannot hash the "
                    "folder until they are renamed (commands above)")
