"""`chimuffin sample OUT`: write the synthetic dataset (the same one the `sample` stage makes)."""

from chimuffin import atomic
from chimuffin.data.sample import write_sample


def register(sub) -> None:
    p = sub.add_parser("sample", help="write the synthetic chihuahua/muffin dataset")
    p.add_argument("out", help="folder to create (hackathon layout)")
    p.add_argument("--labeled-per-class", type=int, default=24)
    p.add_argument("--pool", type=int, default=120)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=run)


def run(args) -> int:
    with atomic.atomic_dir(args.out) as tmp:
        counts = write_sample(tmp, args.labeled_per_class, args.pool, args.test_per_class,
                              args.seed)
    print(f"wrote {counts} to {args.out}")
    return 0
