"""Stage `sample`: write the embedded synthetic dataset (the default data of a fresh clone)."""

from chimuffin import atomic
from chimuffin.data.sample import write_sample
from chimuffin.stages import common


def main(args, params) -> None:
    s = params.sample
    with atomic.atomic_dir(args.out) as tmp:
        counts = write_sample(tmp, s.labeled_per_class, s.pool, s.test_per_class,
                              params.base.seed, True, tuple(params.base.classes),
                              s.val_per_class)
    print(f"sample: wrote {counts} to {args.out}")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--out", required=True)
    common.run(main, p.parse_args())
