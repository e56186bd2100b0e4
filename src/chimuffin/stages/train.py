"""Stage `train`: ResNet-18 from scratch on the labeled training images; save the weights that
train.keep names (the best validation epoch or the last)."""

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from chimuffin import atomic, paths, runtime, tlcio
from chimuffin.config import EVAL_BATCH_SIZE
from chimuffin.data.manifest import open_cache, read_manifest
from chimuffin.data.views import labeled, rows_and_labels
from chimuffin.errors import UserError
from chimuffin.model import build_model, load_checkpoint, save_checkpoint
from chimuffin.progress import Progress, duration, eta
from chimuffin.stages import common
from chimuffin.train.engine import (
    LabeledSet,
    check_cpu_bf16,
    fit,
    steps_per_epoch,
    uses_cpu_bf16,
    with_min_steps,
)


def checkpoint_meta(params, epoch: int, val_acc: float, started_from: dict | None = None) -> dict:
    """The model's metadata; `started_from`: the warm-start weights' file and md5 (None: from
    scratch), which the evaluate stage's report names."""
    t = params.train
    return {"classes": list(params.base.classes), "head": list(t.head), "dropout": t.dropout,
            "image_size": params.base.image_size, "epoch": epoch, "val_accuracy": val_acc,
            "preprocess": "RGB, resize to image_size, /255, ImageNet mean/std",
            "warm_start": started_from}


# DVCLive names: metrics.json keeps the last value logged, so these read `last_epoch.val_acc`
# in `dvc metrics show` / `dvc exp show`, apart from the evaluate stage's `val.accuracy` (the
# saved model, evaluated); their per-epoch history is under plots/metrics/last_epoch/.
def epoch_metrics(r) -> dict[str, float]:
    """What DVCLive logs per epoch; no validation numbers for an epoch that was not validated
    (train.val_every)."""
    metrics = {"last_epoch/train_loss": r.train.loss, "last_epoch/train_acc": r.train.acc,
               "last_epoch/val_loss": r.val_loss, "last_epoch/val_acc": r.val_acc,
               "last_epoch/lr": r.lr}
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def epoch_line(r, epochs: int, elapsed: float) -> str:
    """One log line per epoch (when stdout is not a terminal)."""
    left = eta(r.epoch, epochs, elapsed)
    tail = f", about {duration(left)} left" if left is not None and r.epoch < epochs else ""
    val = "not validated" if math.isnan(r.val_acc) else \
        f"val loss {r.val_loss:.4f} acc {r.val_acc:.4f}"
    return (f"train: epoch {r.epoch}/{epochs}: loss {r.train.loss:.4f} acc {r.train.acc:.4f}, "
            f"{val}, lr {r.lr:.3g}; {duration(elapsed)} elapsed{tail}")


@dataclass
class Kept:
    """The weights train.keep names (the best validation epoch or the last), copied to the CPU
    as the epochs end: models/best.pth is written only when training completes."""
    keep: str
    epochs: int
    epoch: int = 0
    val_acc: float = math.nan
    state: dict = field(default_factory=dict)

    def offer(self, r, is_best: bool) -> None:
        # r.model: the validated weights (the EMA copy when it is on)
        if is_best if self.keep == "best" else r.epoch == self.epochs:
            self.epoch, self.val_acc = r.epoch, r.val_acc
            self.state = {k: v.detach().to("cpu", copy=True)
                          for k, v in r.model.state_dict().items()}


def log_epoch(live, r) -> None:
    for name, value in epoch_metrics(r).items():
        live.log_metric(name, value)
    live.next_step()


def show_epoch(bar: Progress, r, epochs: int) -> None:
    """The bar's numbers on a terminal; one line per epoch in a log (progress.py)."""
    bar.postfix(epoch=r.epoch, loss=f"{r.train.loss:.3f}", val_acc=f"{r.val_acc:.3f}")
    if bar.log:
        bar.print(epoch_line(r, epochs, bar.elapsed()))


def labeled_sets(df, images, params) -> tuple[LabeledSet, LabeledSet]:
    """(training, validation) images."""
    train, val = (LabeledSet(images, *rows_and_labels(labeled(df, split), params.base.classes))
                  for split in ("train", "val"))
    if params.train.batch_size > len(train):
        raise UserError(f"params: train.batch_size ({params.train.batch_size}) is larger than "
                        f"the training set ({len(train)} labeled images)")
    return train, val


def choose_device(params):
    """runtime.setup and the device, refused before anything is written."""
    rt = params.runtime
    runtime.setup(params.base.seed, rt.threads)
    device = runtime.pick_device(rt.device)
    check_cpu_bf16(rt.cpu_bf16, device, runtime.has_native_bf16())
    return device


def warm_start(path: Path, model, params) -> str | None:
    """Load the weights at `path` into `model` when the file is there, and say so; None (train
    from scratch, seeded by base.seed) when it is not. Only a background retrain of the review
    page puts a file there, in its throwaway copy: its last model, `dvc add`ed, so that the
    experiment records the weights it started from (the folder is one of the stage's deps)."""
    if not path.is_file():
        return None
    loaded, meta = load_checkpoint(path, classes=list(params.base.classes))
    t = params.train
    ours = {"train.head": list(t.head), "base.image_size": params.base.image_size}
    theirs = {"train.head": list(meta["head"]), "base.image_size": meta["image_size"]}
    for key, want in ours.items():
        if theirs[key] != want:
            raise UserError(f"{path}: these warm-start weights were trained with {key} "
                            f"{theirs[key]}, the params say {want}; remove the file to train "
                            "from scratch")
    fresh = {k: p.detach().clone() for k, p in model.named_parameters()}
    model.load_state_dict(loaded.state_dict())
    said = (f"train: warm start from {path} (epoch {meta['epoch']} of an earlier model, "
            f"val acc {meta['val_accuracy']:.4f}), not from scratch")
    if (t.warm_shrink, t.warm_perturb) == (1.0, 0.0):
        return said
    shrink_perturb(model, fresh, t.warm_shrink, t.warm_perturb)
    return f"{said}; shrink {t.warm_shrink:g}, perturb {t.warm_perturb:g}"


def shrink_perturb(model, fresh: dict, shrink: float, perturb: float) -> None:
    """Shrink-and-perturb (Ash and Adams, "On Warm-Starting Neural Network Training", NeurIPS
    2020): every parameter becomes shrink * itself + perturb * a fresh initialisation's (their
    own code's noise source: it keeps each layer's initial scale); BatchNorm's running
    statistics, which are buffers, stay."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(shrink).add_(fresh[name], alpha=perturb)


def started_from(path: Path) -> dict | None:
    """The warm-start file and its md5 (what its .dvc file records), or None: from scratch."""
    if not path.is_file():
        return None
    return {"file": path.as_posix(), "md5": hashlib.md5(path.read_bytes()).hexdigest()}


def start_3lc(args, df, params):
    """3LC: per-epoch scalars, per-sample metrics + embeddings (tlcio); None when it is off."""
    if params.tlc.enabled:
        return tlcio.start_training_run(args.run, args.tables, df, params, args.tlc_config)
    tlcio.write_placeholder(args.run, "3LC is off (params.yaml tlc.enabled: false).")
    return None


def grow_to_min_steps(params, n_train: int) -> tuple:
    """params with train.epochs grown to reach train.min_steps on n_train images, and the line
    that says so (None when nothing grew)."""
    grown = with_min_steps(params.train, n_train)
    if grown is params.train:
        return params, None
    per_epoch = steps_per_epoch(n_train, grown.batch_size)
    return replace(params, train=grown), (
        f"train: {n_train} images make {per_epoch} steps an epoch; train.min_steps "
        f"{grown.min_steps} grows {params.train.epochs} epochs to {grown.epochs}")


def done_line(params, device, n_train: int, best, kept: Kept) -> str:
    t = params.train
    precision = "bf16 autocast" if device.type == "cuda" or uses_cpu_bf16(
        params.runtime.cpu_bf16, runtime.has_native_bf16()) else "fp32"
    return (f"train: {n_train} images, {t.epochs} epochs on {device} ({precision}); "
            f"best epoch {best.epoch}: val acc {best.val_acc:.4f}, val loss "
            f"{best.val_loss:.4f}; saved the {t.keep} weights (epoch {kept.epoch})")


def main(args, params) -> None:
    df = read_manifest(Path(args.clean) / paths.MANIFEST_FILE)
    images = open_cache(Path(args.prepared) / paths.IMAGES_FILE)
    train, val = labeled_sets(df, images, params)
    params, grown = grow_to_min_steps(params, len(train))
    if grown:
        print(grown, flush=True)
    t = params.train
    device = choose_device(params)
    run3lc = start_3lc(args, df, params)
    model = build_model(len(params.base.classes), t.head, t.dropout)
    start_file = Path(args.warm_start) / paths.WARM_START_FILE
    warm = warm_start(start_file, model, params)
    if warm:
        print(warm, flush=True)
    kept, bar = Kept(t.keep, t.epochs), Progress("train", t.epochs * len(train), every_s=None)

    from dvclive import Live

    # All or nothing: DVCLive (which writes its files in place, epoch by epoch) writes into a
    # temporary folder; models/best.pth and metrics/train appear only when training completes.
    # Ctrl-C removes the temporary folder; after a SIGKILL the next run does (atomic.py).
    with atomic.atomic_dir(args.live) as live_dir, \
            Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        def on_epoch(r, is_best):
            log_epoch(live, r)
            kept.offer(r, is_best)
            if run3lc:
                run3lc.epoch_end(r, r.model, images, device)
            show_epoch(bar, r, t.epochs)

        best = fit(model, train, val, recipe=t, seed=params.base.seed, device=device,
                   cpu_bf16=params.runtime.cpu_bf16, eval_batch_size=EVAL_BATCH_SIZE,
                   on_epoch=on_epoch, progress=bar.update)
        bar.close()
        live.summary.update({"best/epoch": best.epoch, "best/val_acc": best.val_acc,
                             "best/val_loss": best.val_loss, "train_images": len(train),
                             "kept/epoch": kept.epoch, "kept/val_acc": kept.val_acc,
                             "warm_start": int(warm is not None)})
        model.load_state_dict(kept.state)
        save_checkpoint(args.model, model, checkpoint_meta(params, kept.epoch, kept.val_acc,
                                                           started_from(start_file)))
    print(done_line(params, device, len(train), best, kept))
    if run3lc:
        summary = run3lc.finish(model, kept.epoch, images, device)  # model: the saved weights
        print(f"train: 3LC run {summary['run']}: {summary['metrics_tables']} metrics tables, "
              f"3-D PaCMAP embeddings")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--clean", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--live", required=True, help="DVCLive folder")
    p.add_argument("--run", required=True, help="3LC run folder (a placeholder when 3LC is off)")
    p.add_argument("--tables", required=True, help="3LC tables folder (stage `tables`)")
    p.add_argument("--tlc-config", default=tlcio.CONFIG)
    p.add_argument("--warm-start", default=paths.WARM_START,
                   help=f"a folder: training starts from its {paths.WARM_START_FILE} when that "
                   "file exists, from scratch when not (default %(default)s)")
    common.run(main, p.parse_args())
