"""Stage `train`: ResNet-18 from scratch on the labeled training images; save the weights that
train.keep names (the best validation epoch or the last)."""

import math
from pathlib import Path

from chimuffin import atomic, runtime, tlcio
from chimuffin.data.manifest import open_cache, read_manifest
from chimuffin.data.views import labeled, rows_and_labels
from chimuffin.errors import UserError
from chimuffin.model import build_model, save_checkpoint
from chimuffin.progress import Progress, duration, eta
from chimuffin.stages import common
from chimuffin.train.engine import check_cpu_bf16, fit, uses_cpu_bf16


def checkpoint_meta(params, epoch: int, val_acc: float) -> dict:
    t = params.train
    return {"classes": list(params.base.classes), "head": list(t.head), "dropout": t.dropout,
            "upsample": t.upsample,
            "image_size": params.base.image_size, "epoch": epoch, "val_accuracy": val_acc,
            "preprocess": "RGB, resize to image_size, /255, ImageNet mean/std"}


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


def main(args, params) -> None:
    t, classes = params.train, params.base.classes
    df = read_manifest(Path(args.clean) / "manifest.parquet")
    train_rows, train_y = rows_and_labels(labeled(df, "train"), classes)
    val_rows, val_y = rows_and_labels(labeled(df, "val"), classes)
    if t.batch_size > len(train_rows):
        raise UserError(f"params: train.batch_size ({t.batch_size}) is larger than the training "
                        f"set ({len(train_rows)} labeled images)")
    runtime.setup(params.base.seed, t.threads)
    device = runtime.pick_device(t.device)
    check_cpu_bf16(t.cpu_bf16, device, runtime.has_native_bf16())  # before writing anything
    run3lc = None  # 3LC: per-epoch scalars, per-sample metrics + embeddings (tlcio)
    if params.tlc.enabled:
        run3lc = tlcio.start_training_run(args.run, args.tables, df, params, args.tlc_config)
    else:
        tlcio.write_placeholder(args.run, "3LC is off (params.yaml tlc.enabled: false).")
    images = open_cache(Path(args.prepared) / "images.npy")
    model = build_model(len(classes), t.head, t.dropout, t.upsample)

    from dvclive import Live

    # a bar with an ETA on a terminal; one line per epoch in a log (progress.py)
    bar = Progress("train", t.epochs * len(train_rows), every_s=None)
    # All or nothing: the best weights are kept in memory and DVCLive (which writes its files
    # in place, epoch by epoch) writes into a temporary folder; models/best.pth and
    # metrics/train appear only when training completes. Ctrl-C removes the temporary folder;
    # after a SIGKILL the next run does (atomic.py).
    best_state: dict = {}
    kept: dict = {}  # epoch and validation accuracy of the weights saved (train.keep)
    with atomic.atomic_dir(args.live) as live_dir, \
            Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        def on_epoch(r, is_best):
            for name, value in epoch_metrics(r).items():
                live.log_metric(name, value)
            # r.model: the validated weights (the EMA copy when it is on)
            if is_best if t.keep == "best" else r.epoch == t.epochs:
                kept.update(epoch=r.epoch, val_acc=r.val_acc)
                best_state.update({k: v.detach().to("cpu", copy=True)
                                   for k, v in r.model.state_dict().items()})
            if run3lc:
                run3lc.epoch_end(r, r.model, images, device)
            bar.postfix(epoch=r.epoch, loss=f"{r.train.loss:.3f}", val_acc=f"{r.val_acc:.3f}")
            if bar.log:
                bar.print(epoch_line(r, t.epochs, bar.elapsed()))
            live.next_step()

        best = fit(model, images, train_rows, train_y, val_rows, val_y, t, params.base.seed,
                   device, params.evaluate.batch_size, on_epoch, progress=bar.update)
        bar.close()
        live.summary.update({"best/epoch": best.epoch, "best/val_acc": best.val_acc,
                             "best/val_loss": best.val_loss, "train_images": len(train_rows),
                             "kept/epoch": kept["epoch"], "kept/val_acc": kept["val_acc"]})
        model.load_state_dict(best_state)
        save_checkpoint(args.model, model, checkpoint_meta(params, kept["epoch"],
                                                           kept["val_acc"]))
    precision = "bf16 autocast" if device.type == "cuda" or uses_cpu_bf16(
        t.cpu_bf16, runtime.has_native_bf16()) else "fp32"
    print(f"train: {len(train_rows)} images, {t.epochs} epochs on {device} ({precision}); "
          f"best epoch {best.epoch}: val acc {best.val_acc:.4f}, val loss {best.val_loss:.4f}; "
          f"saved the {t.keep} weights (epoch {kept['epoch']})")
    if run3lc:
        summary = run3lc.finish(model, kept["epoch"], images, device)  # model: the saved weights
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
    common.run(main, p.parse_args())
