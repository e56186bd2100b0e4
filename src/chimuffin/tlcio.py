"""3LC behind one door: the only module that imports `tlc` (package `3lc`, pinned to 2.12.1).

What goes through here: the config and version checks before `import tlc`; the tables that the
`tables` stage writes from the clean manifest; the run that the `train` stage fills with per-epoch
scalars, per-sample metrics and PaCMAP-reduced embeddings; the Dashboard revisions that
`chimuffin pull-3lc` reads; and the command that starts the 3LC Object Service.

Importing this module does not import tlc: `load()` does, the first time a function needs it, so
a pipeline with `tlc.enabled: false` never imports it. 3lc 2.13 and later validate an API key
online at `import tlc`, so they are refused before the import is tried. A port to 3LC 3.x
should only touch this file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from chimuffin import atomic
from chimuffin.config import EVAL_BATCH_SIZE
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import PACMAP_NEIGHBORS
from chimuffin.labels.rows import UNDEFINED

CONFIG = "tlc-config.yaml"
TESTED_VERSION = "2.12.1"
PROJECT = DATASET = "chimuffin"  # tables: data/3lc/chimuffin/datasets/chimuffin/tables/<split>
DATA_ALIAS = "CHIMUFFIN_DATA"    # tlc-config.yaml: the raw data folder, data/raw
SPLITS = ("train", "val", "test")
OBJECT_FILE = "object.3lc.json"
PLACEHOLDER = "README.txt"
# PaCMAP's pair sampling loops forever on very small sets (it needs ~n_neighbors/2 + 7 points).
MIN_REDUCE_ROWS = 10


# --- configuration, version, import ----------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    config: Path               # absolute path of tlc-config.yaml
    project_root: Path         # indexing.project-root-url, resolved
    data_alias: Path | None    # what <CHIMUFFIN_DATA> stands for, resolved

    @property
    def logfile(self) -> Path:
        return self.config.parent / ".tlc" / "3lc.log"


def resolve_anchored(value: str, base: Path) -> Path:
    """3LC's anchored paths: `$./x` is relative to the config's folder, `$../x` to its parent."""
    if value.startswith("$."):
        rest = value[1:]
        dots = len(rest) - len(rest.lstrip("."))
        root = base
        for _ in range(dots - 1):
            root = root.parent
        return (root / rest[dots:].lstrip("/")).resolve()
    return Path(os.path.expandvars(value)).expanduser().resolve()


def check_writable(path: Path, what: str) -> None:
    """Raise UserError unless `path` is (or can be created as) a writable folder."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable (no write permission on {probe})")


def read_settings(config: str | Path = CONFIG) -> Settings:
    """Read and check the repository's tlc-config.yaml (tlc would fail later, less clearly)."""
    config = Path(config).resolve()
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise UserError(f"{config}: cannot read the 3LC config ({e.strerror}); it belongs at "
                        "the repository root") from e
    except yaml.YAMLError as e:
        raise UserError(f"{config}: not valid YAML: {e}") from e
    root = (raw.get("indexing") or {}).get("project-root-url")
    if not isinstance(root, str) or not root:
        raise UserError(f"{config}: indexing.project-root-url is missing")
    if "://" in root:
        raise UserError(f"{config}: indexing.project-root-url must be a local folder, got {root}")
    settings = Settings(config, resolve_anchored(root, config.parent),
                        _alias_dir(raw, config))
    check_writable(settings.project_root, f"{config}: indexing.project-root-url resolves to")
    check_writable(settings.logfile.parent, "3LC log folder")
    return settings


def _alias_dir(raw: dict, config: Path) -> Path | None:
    value = (raw.get("aliases") or {}).get(DATA_ALIAS)
    return resolve_anchored(value, config.parent) if isinstance(value, str) else None


def environment(settings: Settings) -> dict[str, str]:
    """Set before `import tlc`: the repo's config, no error reports, no progress bars."""
    return {"TLC_CONFIG_FILE": str(settings.config), "TLC_SENTRY_ENVIRONMENT": "local",
            "TLC_TELEMETRY": "0", "TLC_DISPLAY_PROGRESS": "0",
            "TLC_LOGFILE": str(settings.logfile)}


def installed_version() -> str:
    try:
        return importlib.metadata.version("3lc")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"3LC is not installed (Python package `3lc`): run `make setup` or "
                        f"`pip install '3lc=={TESTED_VERSION}'`, or set tlc.enabled: false in "
                        "params.yaml") from None


def check_version(version: str) -> None:
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        raise UserError(f"3lc {version}: unrecognised version; chimuffin needs 3lc=="
                        f"{TESTED_VERSION}") from None
    if (major, minor) > (2, 12):
        raise UserError(f"3lc {version} validates an API key online when tlc is imported; "
                        f"chimuffin runs offline with `pip install '3lc=={TESTED_VERSION}'` "
                        "(or set tlc.enabled: false in params.yaml)")
    if (major, minor) < (2, 12):
        raise UserError(f"3lc {version} is older than the tested {TESTED_VERSION}: "
                        f"`pip install '3lc=={TESTED_VERSION}'`")


_loaded: tuple[object, Path] | None = None


def load(config: str | Path = CONFIG):
    """Check config and version, set the environment, import tlc once; return the module."""
    global _loaded
    settings = read_settings(config)
    if _loaded is not None:
        if _loaded[1] != settings.config:  # tlc reads its config once per process
            raise UserError(f"tlc is already configured from {_loaded[1]}, not {settings.config}")
        return _loaded[0]
    version = installed_version()
    check_version(version)
    os.environ.update(environment(settings))
    try:
        tlc = importlib.import_module("tlc")
    except Exception as e:  # noqa: BLE001 - any failure at import is the user's install
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"`import tlc` (3lc {version}) failed: {type(e).__name__}: "
                        f"{first}") from e
    _loaded = (tlc, settings.config)
    return tlc


@contextmanager
def tlc_warnings() -> Iterator[list[str]]:
    """Collect tlc's logged warnings: some failures are only logged (reductions return {})."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            notes.append(record.getMessage().strip().split("\n")[0])  # first line: the gist

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("tlc")
    logger.addHandler(handler)
    try:
        yield notes
    finally:
        logger.removeHandler(handler)


# --- folders DVC tracks ----------------------------------------------------------------------

def write_placeholder(target: str | Path, text: str) -> None:
    """A folder holding only README.txt, where a 3LC object would be (DVC needs the out)."""
    with atomic.atomic_dir(target) as tmp:
        (tmp / PLACEHOLDER).write_text(text.rstrip() + "\n", encoding="utf-8")


def same_object_folder(a: Path, b: Path) -> bool:
    """Same files and bytes, except the `created` timestamp tlc puts in object.3lc.json."""
    if not b.is_dir():
        return False
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    for name in names:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name == OBJECT_FILE:
            x, y = (json.loads(v) for v in (x, y))
            x.pop("created", None)
            y.pop("created", None)
        if x != y:
            return False
    return True


# --- tables ----------------------------------------------------------------------------------

def image_prefix(data_dir: str | Path, settings: Settings) -> str:
    """Where table image paths start: <CHIMUFFIN_DATA>/... inside the aliased folder (valid
    wherever the repository moves), else the absolute data folder."""
    data_dir = Path(data_dir).resolve()
    alias = settings.data_alias
    if alias is not None and data_dir.is_relative_to(alias):
        rel = data_dir.relative_to(alias).as_posix()
        return f"<{DATA_ALIAS}>" + ("" if rel == "." else f"/{rel}")
    return data_dir.as_posix()


def label_names(classes: list[str]) -> list[str]:
    return [*classes, UNDEFINED]


def table_frame(df: pd.DataFrame, split: str, classes: list[str], prefix: str) -> pd.DataFrame:
    """The rows of one table: image, label (index into classes + undefined), weight (0 for the
    unlabeled pool), path (relative to the dataset root, the key decisions.csv uses)."""
    part = df[df["split"] == split].sort_values("path", kind="stable")
    index = {name: i for i, name in enumerate(label_names(classes))}
    unknown = sorted(set(part["label"]) - set(index))
    if unknown:
        raise UserError(f"clean manifest: label {unknown[0]!r} is not one of "
                        f"{', '.join(index)}")
    return pd.DataFrame({
        "image": prefix + "/" + part["path"],
        "label": part["label"].map(index).astype("int32"),
        "weight": np.where(part["label"] == UNDEFINED, 0.0, 1.0),
        "path": part["path"],
    }).reset_index(drop=True)


def write_tables(df: pd.DataFrame, out_dir: str | Path, classes: list[str],
                 data_dir: str | Path, config: str | Path = CONFIG) -> dict[str, str]:
    """One table per split under out_dir/<split>. A table whose content would not change is
    left untouched, so reruns keep every byte (and the Dashboard's revisions stay valid)."""
    settings = read_settings(config)
    tlc = load(config)
    prefix = image_prefix(data_dir, settings)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    schemas = {"image": tlc.ImagePath,
               "label": tlc.CategoricalLabel("label", classes=label_names(classes)),
               "weight": tlc.SampleWeightSchema()}
    status = {}
    for split in SPLITS:
        frame = table_frame(df, split, classes, prefix)
        target = out_dir / split
        if frame.empty:
            write_placeholder(target, f"No 3LC table: the dataset has no {split} images.")
            status[split] = "no images (placeholder)"
            continue
        # Not named `.<split>.*`: atomic_dir(target) deletes those as its own leftovers.
        atomic.remove_stale_temporaries(out_dir / "scratch")  # after a SIGKILL
        with tempfile.TemporaryDirectory(prefix=".scratch.", dir=out_dir) as tmp:
            fresh = Path(tmp) / split  # the parquet file is named after the table folder
            writer = tlc.TableWriter(table_url=str(fresh), column_schemas=schemas,
                                     if_exists="overwrite",
                                     description=f"chimuffin {split}: clean manifest")
            writer.add_batch({c: frame[c].tolist() for c in frame.columns})
            writer.finalize()
            if same_object_folder(fresh, target):
                status[split] = f"{len(frame)} rows, unchanged"
                continue
            with atomic.atomic_dir(target) as new:
                for f in fresh.iterdir():
                    os.replace(f, new / f.name)
            status[split] = f"{len(frame)} rows"
    return status


@dataclass
class TableRows:
    split: str
    url: str
    frame: pd.DataFrame  # clean-manifest rows in table order


def rows_in_table_order(clean: pd.DataFrame, paths: list[str], split: str,
                        where: Path) -> pd.DataFrame:
    """Clean-manifest rows in the order of a table's `path` column; the table must list
    exactly the split's images (else it is older than the clean manifest)."""
    part = clean[clean["split"] == split].set_index("path", drop=False)
    missing = [p for p in paths if p not in part.index]
    if missing or len(paths) != len(part):
        raise UserError(f"{where}: the 3LC table does not match data/clean ({len(paths)} rows vs "
                        f"{len(part)} {split} images); run `dvc repro tables`")
    return part.loc[paths].reset_index(drop=True)


def open_tables(tables_dir: str | Path, clean: pd.DataFrame,
                config: str | Path = CONFIG) -> list[TableRows]:
    tlc = load(config)
    out = []
    for split in SPLITS:
        folder = Path(tables_dir).resolve() / split
        if not (folder / OBJECT_FILE).is_file():
            if (clean["split"] == split).any():
                raise UserError(f"{folder}: no 3LC table; run `dvc repro tables`")
            continue
        table = tlc.Table.from_url(str(folder))
        paths = table.get_column("path").to_pylist()
        out.append(TableRows(split, str(table.url), rows_in_table_order(clean, paths, split,
                                                                       folder)))
    return out


# --- the training run --------------------------------------------------------------------------

def pacmap_neighbors(n_rows: int, wanted: int) -> int:
    """A neighbour count PaCMAP can sample pairs for on n_rows points (see MIN_REDUCE_ROWS)."""
    return max(2, min(wanted, n_rows - 8))


def metrics_columns(pred: pd.DataFrame, emb: np.ndarray, classes: list[str], epoch: int,
                    best: bool) -> dict:
    """Per-sample columns; loss and correct are NaN for unlabeled (`undefined`) images."""
    n = len(pred)
    return {
        "epoch": np.full(n, epoch, dtype=np.int32),
        "best": [bool(best)] * n,
        "loss": pred["loss"].to_numpy(np.float32),
        "predicted": pred["prediction"].map({c: i for i, c in enumerate(classes)})
                                       .to_numpy(np.int32),
        "confidence": pred["confidence"].to_numpy(np.float32),
        "correct": pred["correct"].to_numpy(np.float32),
        "embedding": np.asarray(emb, dtype=np.float32),
    }


class TrainingRun:
    """A 3LC run for one training: params, per-epoch scalars, and for chosen epochs and the best
    model the per-sample metrics and 512-d embeddings of every table row, reduced by a seeded
    3-D PaCMAP at the end (fitted on the train table, applied to all)."""

    def __init__(self, run_dir: str | Path, tables: list[TableRows], parameters: dict,
                 classes: list[str], seed: int, collect_every: int, n_neighbors: int,
                 batch_size: int, description: str, config: str | Path = CONFIG):
        self.tlc = load(config)
        self.tables, self.classes, self.seed = tables, classes, seed
        self.collect_every, self.batch_size = collect_every, batch_size
        train = [t for t in tables if t.split == "train"]
        if not train or len(train[0].frame) < MIN_REDUCE_ROWS:
            n = len(train[0].frame) if train else 0
            raise UserError(f"3LC: the train table has {n} images; the PaCMAP reduction of its "
                            f"embeddings needs at least {MIN_REDUCE_ROWS} (or set "
                            "tlc.enabled: false)")
        self.train_url = train[0].url
        self.n_neighbors = pacmap_neighbors(len(train[0].frame), n_neighbors)
        self.run = self.tlc.init(run_url=str(Path(run_dir).resolve()), parameters=parameters,
                                 description=description, if_exists="overwrite")
        emb_schema = self.tlc.EmbeddingsMetricsCollector(layers=[0]).column_schemas
        self.schemas = {"epoch": self.tlc.EpochSchema(),
                        "predicted": self.tlc.CategoricalLabelSchema(classes,
                                                                     display_name="predicted"),
                        "embedding": next(iter(emb_schema.values()))}
        self.collected: list[tuple[int, bool]] = []

    def epoch_end(self, r, model, images: np.ndarray, device) -> None:
        """After each epoch (engine.fit's on_epoch): scalars, and metrics when due."""
        scalars = {"epoch": r.epoch, "train_loss": r.train.loss, "train_accuracy": r.train.acc,
                   "val_loss": r.val_loss, "val_accuracy": r.val_acc, "lr": r.lr}
        # epochs that were not validated (train.val_every) log no validation numbers
        self.tlc.log({k: v for k, v in scalars.items() if not math.isnan(v)})
        if self.collect_every > 0 and r.epoch % self.collect_every == 0:
            self.collect(model, images, device, r.epoch)

    def collect(self, model, images: np.ndarray, device, epoch: int, best: bool = False) -> None:
        from chimuffin.infer.manifest_predictions import predict_manifest
        from chimuffin.progress import Progress

        what = f"3LC metrics, {'saved model' if best else f'epoch {epoch}'}"
        total = sum(len(t.frame) for t in self.tables)
        with Progress(what, total, leave=False) as bar:
            preds = [predict_manifest(model, images, t.frame, self.classes, self.batch_size,
                                      device, with_embeddings=True, progress=bar.update)
                     for t in self.tables]
        for t, (pred, emb) in zip(self.tables, preds, strict=True):
            self.run.add_metrics(metrics_columns(pred, emb, self.classes, epoch, best),
                                 column_schemas=self.schemas, foreign_table_url=t.url,
                                 foreign_table_display_name=t.split)
        self.collected.append((epoch, best))

    def finish(self, best_model, best_epoch: int, images: np.ndarray, device) -> dict:
        """Collect for the best model, then reduce every metrics table's embeddings to 3-D; a
        failed reduction stops the stage."""
        self.collect(best_model, images, device, best_epoch, best=True)
        return self.reduce()

    def reduce(self) -> dict:
        from chimuffin.infer.embeddings import expected_pacmap_notes_silenced
        from chimuffin.progress import timed

        expected = len(self.collected) * len(self.tables)
        with tlc_warnings() as notes, expected_pacmap_notes_silenced(), \
                timed(f"3LC: PaCMAP 3-D of {expected} metrics tables"):
            reduced = self.run.reduce_embeddings_by_foreign_table_url(
                self.train_url, method="pacmap", n_components=3, random_state=self.seed,
                n_neighbors=self.n_neighbors, delete_source_tables=True)
        if len(reduced or {}) != expected:
            reason = "; ".join(notes) or "no reason logged (see .tlc/3lc.log)"
            raise UserError(f"3LC: the PaCMAP reduction of the run's embeddings failed "
                            f"({len(reduced or {})} of {expected} metrics tables reduced): "
                            f"{reason}")
        self.run.set_status_completed()
        url = str(self.run.url)
        self.tlc.close()
        return {"run": url, "collections": len(self.collected), "metrics_tables": expected,
                "pacmap_neighbors": self.n_neighbors}


def start_training_run(run_dir: str | Path, tables_dir: str | Path, clean: pd.DataFrame,
                       params, config: str | Path = CONFIG) -> TrainingRun:
    """The train stage's run: tables read back (row order), params recorded, checks done early
    (before hours of training)."""
    from chimuffin.config import as_dict

    t = params.train
    return TrainingRun(run_dir, open_tables(tables_dir, clean, config), as_dict(params),
                       params.base.classes, params.base.seed, params.tlc.collect_every,
                       PACMAP_NEIGHBORS, EVAL_BATCH_SIZE,
                       description=f"chimuffin train: {t.epochs} epochs, lr {t.lr}, "
                                   f"{t.scheduler}", config=config)


# --- Dashboard revisions -----------------------------------------------------------------------

def created_at(folder: Path) -> datetime:
    data = json.loads((folder / OBJECT_FILE).read_text(encoding="utf-8"))
    stamp = datetime.fromisoformat(data["created"])
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def lineage(latest: Path, base: Path, limit: int = 1000) -> list[Path]:
    """Revision folders from `latest` back to `base` (excluded), following input_table_url."""
    chain, here = [], latest.resolve()
    base = base.resolve()
    while here != base:
        if len(chain) >= limit:
            raise UserError(f"{latest}: revision chain longer than {limit} or cyclic")
        data = json.loads((here / OBJECT_FILE).read_text(encoding="utf-8"))
        parent = data.get("input_table_url")
        if not isinstance(parent, str):
            raise UserError(f"{here}: a {data.get('type')} revision without input_table_url; "
                            f"it does not descend from {base}")
        chain.append(here)
        here = (here / parent).resolve()  # relative to the revision folder (or absolute)
    return chain


def table_labels(table) -> pd.DataFrame:
    """path, label (name), weight of a tlc table (any revision)."""
    names = table.get_simple_value_map("label") or {}
    df = table.to_pandas()
    for col in ("path", "label", "weight"):
        if col not in df.columns:
            raise UserError(f"{table.url}: 3LC table has no `{col}` column")
    labels = [names.get(int(v), f"<unnamed value {v}>") for v in df["label"]]
    return pd.DataFrame({"path": df["path"].astype(str), "label": labels,
                         "weight": df["weight"].astype(float)})


@dataclass
class Revision:
    base_url: str
    latest_url: str
    chain: list[Path]      # revision folders, newest first (empty: no edits since the base)
    stale: list[Path]      # revisions made before the base table was last rewritten
    base: pd.DataFrame     # path, label, weight of the pipeline's table
    latest: pd.DataFrame   # ... of the newest revision


def read_latest_revision(table_dir: str | Path, config: str | Path = CONFIG,
                         timeout: float = 60.0) -> Revision:
    """The newest revision of a pipeline table (what a Dashboard commit writes). Time-dependent
    by nature: only for tools that write the git-tracked label file, never inside a stage."""
    folder = Path(table_dir).resolve()
    if not (folder / OBJECT_FILE).is_file():
        raise UserError(f"{folder}: no 3LC table here; run `dvc repro tables` first "
                        "(with tlc.enabled: true)")
    tlc = load(config)
    base = tlc.Table.from_url(str(folder))
    with tlc_warnings() as notes:
        try:
            latest = base.latest(timeout=timeout)
        except (ValueError, TimeoutError) as e:
            raise UserError(f"{folder}: cannot resolve the newest revision: {e} "
                            f"{'; '.join(notes)}") from e
    latest_dir = Path(str(latest.url))
    chain = lineage(latest_dir, folder)
    base_time = created_at(folder)
    stale = [p for p in chain if created_at(p) < base_time]
    return Revision(str(base.url), str(latest.url), chain, stale, table_labels(base),
                    table_labels(latest))


def retire(chain: list[Path], archive: str | Path) -> list[Path]:
    """Move pulled revisions out of the indexed folders: their row-number edits would be applied
    to the rewritten table after the next `dvc repro`, and mean something else there."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    dest_root = Path(archive) / stamp
    dest_root.mkdir(parents=True, exist_ok=True)
    moved = []
    for folder in chain:
        dest = dest_root / folder.name
        shutil.move(str(folder), dest)
        moved.append(dest)
    return moved


# --- the Object Service ------------------------------------------------------------------------

def service_command(host: str, port: int, config: str | Path = CONFIG
                    ) -> tuple[list[str], dict[str, str]]:
    """`3lc service` on host:port with the repo's config (the hosted Dashboard page talks to
    it from the browser); never the public examples, which live online."""
    settings = read_settings(config)
    check_version(installed_version())
    exe = Path(sys.executable).with_name("3lc")
    if not exe.is_file():
        found = shutil.which("3lc")
        if not found:
            raise UserError("the `3lc` command is not installed (run `make setup`)")
        exe = Path(found)
    cmd = [str(exe), "service", "--host", host, "--port", str(port), "--no-public-examples",
           "--no-tui"]
    return cmd, {**os.environ, **environment(settings)}
