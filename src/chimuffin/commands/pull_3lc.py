"""`chimuffin pull-3lc`: turn 3LC Dashboard edits of a pipeline table into label decisions.

The Dashboard saves edits as a new revision beside the table (e.g. tables/train_0000). This
reads the newest revision, compares it with the table the pipeline wrote, and merges what
changed into data/labels/decisions.csv (source `3lc`): a new class is a relabel (or a label for
a pool image), `undefined` or weight 0 takes an image out of training, a deleted row is
`remove`. Decisions from a person (source `human`) are never overridden. Pulled revisions are
then moved to data/3lc-pulled/, because after `dvc repro` rewrites the table their row-number
edits would point at other images.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chimuffin import paths, tlcio
from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import (
    REMOVE,
    UNDEFINED,
    Decision,
    merge_decisions,
)


def register(sub) -> None:
    p = sub.add_parser("pull-3lc", help="merge 3LC Dashboard edits into data/labels/decisions.csv",
                       description=__doc__)
    p.add_argument("--table", choices=tlcio.SPLITS, default="train",
                   help="which pipeline table's revisions to read (default %(default)s)")
    p.add_argument("--tables", default=paths.TABLES, help="tables folder (default %(default)s)")
    p.add_argument("--decisions", default=paths.DECISIONS,
                   help="label file to merge into (default %(default)s)")
    p.add_argument("--params", default=paths.PARAMS,
                   help="params file (base.classes) (default %(default)s)")
    p.add_argument("--tlc-config", default=tlcio.CONFIG,
                   help="3LC config naming the tables (default %(default)s)")
    p.add_argument("--archive", default=paths.PULLED_3LC,
                   help="where pulled revisions are moved (default %(default)s)")
    p.add_argument("--keep-revisions", action="store_true",
                   help="leave pulled revisions in place; they go stale after `dvc repro` "
                        "(default: move them)")
    p.add_argument("--dry-run", action="store_true",
                   help="report only; write and move nothing (default: off)")
    p.set_defaults(func=run)


def edit_kind(old: str, new: str) -> str:
    if new == REMOVE:
        return "remove"
    if new == UNDEFINED:
        return "unlabel"
    return "label" if old == UNDEFINED else "relabel"


def revision_decisions(base: pd.DataFrame, latest: pd.DataFrame, classes: list[str],
                       revision: str) -> tuple[list[Decision], list[str]]:
    """Decisions for what `latest` changed against `base` (both: path, label, weight), and
    notes on edits that make no decision. Pure: no tlc, no files."""
    allowed = [*classes, UNDEFINED]
    old, new = base.set_index("path"), latest.set_index("path")
    decisions, notes = [], []
    for path in sorted(set(old.index) - set(new.index)):
        decisions.append(Decision(path, REMOVE, "3lc", f"3LC {revision}: row deleted"))
    for path in sorted(set(new.index) - set(old.index)):
        notes.append(f"{path}: row added in 3LC, ignored (add images to the dataset instead)")
    for path in sorted(set(old.index) & set(new.index)):
        (o_label, o_weight), (n_label, n_weight) = (old.loc[path, ["label", "weight"]],
                                                    new.loc[path, ["label", "weight"]])
        if n_label not in allowed:
            raise UserError(f"3LC {revision}: {path} has label {n_label!r}; chimuffin knows "
                            f"{', '.join(allowed)} (delete the row to drop the image)")
        if o_weight > 0 and n_weight == 0:  # 3LC's way to leave a sample out of training
            label, why = UNDEFINED, f"weight {o_weight:g} -> 0"
        elif n_label != o_label:
            label, why = n_label, f"{o_label} -> {n_label}"
        else:
            if n_weight != o_weight:
                notes.append(f"{path}: weight {o_weight:g} -> {n_weight:g} ignored (chimuffin "
                             "uses labels; weight 0 takes a labeled image out of training)")
            continue
        if label != o_label:
            decisions.append(Decision(path, label, "3lc", f"3LC {revision}: {why}"))
    return decisions, notes


def run(args) -> int:
    classes = load_params(args.params).base.classes
    rev = tlcio.read_latest_revision(Path(args.tables) / args.table, args.tlc_config)
    if not rev.chain:
        print(f"pull-3lc: no revision of {rev.base_url} newer than the pipeline's table; "
              "nothing to pull")
        return 0
    names = [p.name for p in rev.chain]
    if rev.stale:
        raise UserError(
            f"revision(s) {', '.join(p.name for p in rev.stale)} were saved before the pipeline "
            f"rewrote {rev.base_url}; their edits are row numbers into the older table and cannot "
            f"be mapped safely. Redo them in the Dashboard on the current table and delete: "
            f"{' '.join(str(p) for p in rev.stale)}")
    new, notes = revision_decisions(rev.base, rev.latest, classes, names[0])
    result = {}

    def change(old):
        # under the label file's lock (a dry run: on the file as read): merged into what it
        # holds now, so the counts printed are the ones written
        merged, result["changed"] = merge_decisions(old, new)
        current = {d.path: d for d in old}
        result["kept"] = [d for d in new if d.path in current
                          and current[d.path].source == "human"
                          and current[d.path].label != d.label]
        return merged

    if args.dry_run:
        change(locked.read(args.decisions, classes).decisions)
    else:
        locked.update(args.decisions, classes, change)
    changed, kept = result["changed"], result["kept"]
    base_label = dict(zip(rev.base["path"], rev.base["label"], strict=True))

    print(f"pull-3lc: {rev.latest_url} ({len(names)} revision(s): {', '.join(names)})")
    for d in new:
        flag = "  (kept the human decision)" if d in kept else ""
        print(f"  {edit_kind(base_label[d.path], d.label):8s}{d.path}: "
              f"{base_label[d.path]} -> {d.label}{flag}")
    for note in notes:
        print(f"  note: {note}")
    print(f"pull-3lc: {changed} decision(s) added or changed in {args.decisions}"
          + (f"; {len(kept)} kept as decided by a person" if kept else ""))
    if args.dry_run:
        print("pull-3lc: dry run, nothing written")
        return 0
    if not args.keep_revisions:
        moved = tlcio.retire(rev.chain, args.archive)
        print(f"pull-3lc: moved the pulled revision(s) to {moved[0].parent}")
    print("next: review `git diff " + args.decisions + "`, then `dvc repro` and commit")
    return 0
