"""Stage `tables`: 3LC tables from the clean manifest, one per split (train includes the
unlabeled pool as `undefined` with weight 0). With tlc.enabled false: placeholder folders."""

from pathlib import Path

from chimuffin import paths, tlcio
from chimuffin.data.manifest import read_manifest
from chimuffin.stages import common

DISABLED = "3LC is off (params.yaml tlc.enabled: false): no table was written."


def main(args, params) -> None:
    if not params.tlc.enabled:
        # placeholders need no manifest; and a process that exits milliseconds after reading a
        # parquet file can be aborted by pyarrow's still-busy threads (see common.run)
        for split in tlcio.SPLITS:
            tlcio.write_placeholder(Path(args.out) / split, DISABLED)
        print(f"tables: {DISABLED}")
        return
    df = read_manifest(Path(args.clean) / paths.MANIFEST_FILE)
    status = tlcio.write_tables(df, args.out, params.base.classes, params.prepare.data_dir,
                                args.tlc_config)
    print("tables: " + "; ".join(f"{split}: {s}" for split, s in status.items()))


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--clean", required=True)
    p.add_argument("--out", required=True, help="folder holding one table folder per split")
    p.add_argument("--tlc-config", default=tlcio.CONFIG)
    common.run(main, p.parse_args())
