"""Stage `prepare`: scan the dataset, decode every image once, split, write the manifest."""

import json
from pathlib import Path

from chimuffin import atomic, paths
from chimuffin.data.prepare import prepare_dataset
from chimuffin.labels.rows import read_validation
from chimuffin.stages import common


def main(args, params) -> None:
    b, p = params.base, params.prepare
    val_file = Path(args.validation)
    validation = read_validation(val_file, b.classes)
    with atomic.atomic_dir(args.out) as tmp:
        report = prepare_dataset(Path(p.data_dir), b.classes, b.image_size, p.val_fraction,
                                 b.seed, validation, str(val_file), tmp)
        atomic.write_json(tmp / paths.REPORT_JSON_FILE, report)
    print(f"prepare: {report['images']} images {json.dumps(report['counts'])}; "
          f"{len(report['excluded'])} excluded; conversions {report['conversions']}")
    for e in report["excluded"][:20]:
        print(f"  excluded {e['path']}: {e['reason']}")
    if len(report["excluded"]) > 20:
        print(f"  ... and {len(report['excluded']) - 20} more (see {args.out}/report.json)")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--validation", default=paths.VALIDATION,
                   help="git-tracked path,label file of pool images to validate on")
    p.add_argument("--out", required=True)
    common.run(main, p.parse_args())
