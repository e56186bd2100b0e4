"""Stage `clean`: apply the git-tracked label decisions, drop identical copies, summarise."""

from pathlib import Path

from chimuffin import atomic, paths
from chimuffin.data.manifest import read_manifest
from chimuffin.labels.rows import apply_decisions, dedupe_identical, read_decisions
from chimuffin.stages import common


def summarize(df, conflicts: list[dict], dropped: int, n_decisions: int) -> dict:
    def counts(*cols):
        return {"/".join(map(str, k)) if isinstance(k, tuple) else str(k): int(v)
                for k, v in df.groupby(list(cols)).size().items()}

    return {"images": len(df), "decisions": n_decisions, "duplicates_dropped": dropped,
            "label_conflicts": conflicts, "by_split_label": counts("split", "label"),
            "by_label_source": counts("label_source")}


def main(args, params) -> None:
    manifest = read_manifest(Path(args.prepared) / paths.MANIFEST_FILE)
    decisions = read_decisions(args.decisions, params.base.classes)
    df = apply_decisions(manifest, decisions, name=args.decisions)
    conflicts, dropped = [], 0
    if params.clean.dedupe:
        df, conflicts, dropped = dedupe_identical(df)
    summary = summarize(df, conflicts, dropped, len(decisions))
    with atomic.atomic_dir(args.out) as tmp:
        atomic.write_parquet(tmp / paths.MANIFEST_FILE, df)
        atomic.write_json(tmp / paths.SUMMARY_FILE, summary)
    print(f"clean: {len(df)} images, {len(decisions)} decisions, {dropped} identical copies "
          f"dropped, {len(conflicts)} label conflicts; {summary['by_split_label']}")
    for c in conflicts[:10]:
        print(f"  conflict: {c['paths']} labeled {c['labels']}; kept {c['kept']}")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--prepared", required=True)
    p.add_argument("--decisions", default=paths.DECISIONS)
    p.add_argument("--out", required=True)
    common.run(main, p.parse_args())
