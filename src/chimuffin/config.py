"""params.yaml as frozen dataclasses, loaded strictly.

Every group of params.yaml maps to one dataclass below. Loading rejects unknown keys (a typo in
`dvc exp run -S trian.lr=...` must not be silently ignored), missing keys, wrong types and
out-of-range values, with a message that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from chimuffin.errors import UserError
from chimuffin.paths import PARAMS


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}


IMAGE_SIZES = (32, 512)  # base.image_size's range; checkpoints are checked against it too


def num(lo=None, hi=None, lo_open=False, hi_open=False):
    """A dataclass field with an allowed numeric range (no default: every key must be given)."""
    return field(metadata=_range(lo, hi, lo_open, hi_open))


@dataclass(frozen=True)
class Base:
    seed: int = num(0, 2**63 - 1)  # torch.manual_seed takes at most 64 bits
    classes: list[str] = field()
    image_size: int = num(*IMAGE_SIZES)


@dataclass(frozen=True)
class Sample:
    labeled_per_class: int = num(2, 10_000)
    pool: int = num(0, 100_000)
    test_per_class: int = num(0, 10_000)
    val_per_class: int = num(0, 10_000)  # val128/: validation images, never trained on


@dataclass(frozen=True)
class Prepare:
    data_dir: str = field()
    # Part of the labeled train images held out for model selection (stratified, seeded);
    # images listed in data/labels/validation.csv are added to it.
    val_fraction: float = num(0.0, 0.9)


@dataclass(frozen=True)
class Clean:
    dedupe: bool = field()


@dataclass(frozen=True)
class Augment:
    resize: int = num(32, 1024)
    flip_p: float = num(0.0, 1.0)
    rotation_deg: float = num(0.0, 180.0)
    shear_deg: float = num(0.0, 45.0)
    scale_min: float = num(0.1, 4.0)
    scale_max: float = num(0.1, 4.0)
    jitter: float = num(0.0, 1.0)
    erase_p: float = num(0.0, 1.0)


# Images per inference batch (validation, evaluate, embeddings): a speed setting, not a result;
# 128 runs evaluation at its fastest measured rate on 2 CPU cores.
EVAL_BATCH_SIZE = 128

# Parts of the reference recipe that every recipe kept, fixed rather than offered as keys.
T_MULT = 2            # cosine restarts: each cycle twice as long as the one before
GRAD_CLIP = 1.0       # gradient-norm clipping
RES_RAMP_END = 0.75   # the resolution ramp reaches full size at this fraction of the epochs


@dataclass(frozen=True)
class Train:
    epochs: int = num(1, 10_000)
    # At least this many optimizer steps (0 = off): with few training images the epochs grow to
    # ceil(min_steps / steps per epoch), so a small training set still gets the steps its
    # schedule needs (one-cycle, cosine and the resolution ramp stretch; restart cycles do not).
    min_steps: int = num(0, 10_000_000)
    batch_size: int = num(1, 4096)
    lr: float = num(0.0, 10.0, lo_open=True)
    weight_decay: float = num(0.0, 1.0)
    scheduler: Literal["cosine_restarts", "cosine", "onecycle"] = field()
    t0: int = num(1)
    warmup_epochs: float = num(0.0, 10_000.0)  # linear warm-up (cosine, cosine_restarts)
    optimizer_impl: Literal["default", "fused"] = field()  # AdamW kernels
    head: list[int] = field()
    dropout: float = num(0.0, 1.0, hi_open=True)
    label_smoothing: float = num(0.0, 1.0, hi_open=True)
    augment: Augment = field()
    # Resolution schedule: train at res_min (0 = off) until res_ramp_start, then ramp linearly
    # to base.image_size at 75% of the epochs (schedules.RES_RAMP_END); the last epoch and
    # validation are full size.
    res_min: int = num(0, 512)
    res_ramp_start: float = num(0.0, 1.0)
    # Mixup / cutmix (alpha 0 = off): each batch is mixed with probability mix_prob.
    mixup_alpha: float = num(0.0, 10.0)
    cutmix_alpha: float = num(0.0, 10.0)
    mix_prob: float = num(0.0, 1.0)
    ema_decay: float = num(0.0, 1.0, hi_open=True)  # EMA of weights, validated and saved; 0 = off
    val_tta_flip: bool = field()  # select the best epoch on flip-averaged validation logits
    # Which weights the stage saves: the best validation epoch (the reference's choice; its
    # validation accuracy is then optimistic) or the last epoch's (an honest validation number).
    keep: Literal["best", "last"] = field()
    # Validate every N epochs (and always after the last): validation costs a forward pass over
    # the validation images (two with val_tta_flip), worth skipping when only the last counts.
    val_every: int = num(1, 10_000)
    # Shrink-and-perturb of warm-start weights (models/warm_start/; nothing without them): each
    # parameter becomes warm_shrink * itself + warm_perturb * a fresh initialisation's (the
    # seeded one the stage builds); BatchNorm statistics are kept. 1 and 0 keep the weights.
    warm_shrink: float = num(0.0, 1.0, lo_open=True)
    warm_perturb: float = num(0.0, 1.0)


@dataclass(frozen=True)
class Runtime:
    # Where and how the code runs, not what the model is: train, evaluate and embed read it, and
    # a recipe (recipes/*.yaml, the `train` group) never holds it.
    device: Literal["auto", "cpu", "cuda"] = field()
    threads: int = num(0, 256)  # 0 = every core this process may use
    # bf16 autocast when training on CPU: true (native bf16 CPUs only), false, or auto (on where
    # the CPU has native bf16, off elsewhere)
    cpu_bf16: bool | Literal["auto"] = field()


@dataclass(frozen=True)
class Evaluate:
    tta_flip: bool = field()


@dataclass(frozen=True)
class Suggest:
    k: int = num(1, 200)                      # labeled neighbours that vote
    model_weight: float = num(0.0, 1.0)       # model vs neighbours in a suggestion's score
    dup_similarity: float = num(0.5, 1.0)     # pixel-signature cosine of a near duplicate
    issue_threshold: float = num(0.0, 1.0)    # label-issue score that enters the review queue
    cluster_similarity: float = num(-1.0, 1.0)  # embedding cosine to join a review cluster
    page_size: int = num(1, 1000)             # images on one review page (one proposed label)


@dataclass(frozen=True)
class Tlc:
    # 3LC tables (stage `tables`) and a 3LC run with per-sample metrics (stage `train`).
    # false: the pipeline never imports tlc and writes placeholder folders instead.
    enabled: bool = field()
    # Per-sample metrics + embeddings every N epochs (0: only for the best model, always done).
    collect_every: int = num(0, 10_000)


@dataclass(frozen=True)
class Review:
    # The review page (`chimuffin review`), not a stage: no stage reads it, so changing it
    # reruns nothing. Background retraining: after this many new person decisions since the
    # model the page shows (0 = only when the page asks for one).
    retrain_every: int = num(0, 1_000_000)
    # The `train` group background retrains use (a recipe file, relative to the repository;
    # "" = params.yaml's own `train` group). The final model never comes from it.
    round_recipe: str = field()
    # The `train` group of a background retrain that starts from the last background model's
    # weights instead of from scratch (a recipe file; "" = every retrain from scratch). The
    # first retrain of a session starts from scratch with round_recipe.
    warm_recipe: str = field()
    # Params a background retrain changes in its copy after the round recipe, each in DVC's
    # `-S` form (GROUP.KEY=VALUE): what the page never reads need not be made there (3LC
    # tables and run, flip TTA over every image). The experiment's params.yaml records them.
    background_set: list[str] = field()
    # Warm starts begin once the person has given this many decisions; before, every retrain
    # starts from scratch (a few dozen steps from a model trained on few labels scored worse).
    warm_after: int = num(0, 1_000_000)
    # The `train` group of the final step (`chimuffin final`, the page's "final model", the end
    # of `chimuffin loop`): it trains from the last background model on every
    # label (a recipe file, relative to the repository).
    final_recipe: str = field()
    # The validation view's sample: this many pool images drawn at random (base.seed), at most
    # a quarter of the pool, answered into validation.csv (0 = no validation view).
    validation_size: int = num(0, 100_000)


@dataclass(frozen=True)
class Params:
    base: Base = field()
    sample: Sample = field()
    prepare: Prepare = field()
    clean: Clean = field()
    train: Train = field()
    runtime: Runtime = field()
    evaluate: Evaluate = field()
    suggest: Suggest = field()
    review: Review = field()
    tlc: Tlc = field()


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _finite_float(key: str, value: int | float) -> float:
    # .nan/.inf are YAML floats, but no param means anything with them (and nan would pass
    # every range check); a huge integer does not fit a float at all.
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise UserError(f"params: {key} must be a finite number, got {value!r}")
    return f


def _check_scalar(key: str, value: Any, tp) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = _finite_float(key, value)
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a programming error in the dataclasses above
        raise TypeError(f"unsupported param type {tp} for {key}")
    if not ok:
        raise UserError(f"params: {key} must be {_type_name(tp)}, got {value!r}")
    return value


def _check_range(key: str, value: Any, meta) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo)):
        bound = f"> {lo}" if meta["lo_open"] else f">= {lo}"
        raise UserError(f"params: {key} must be {bound}, got {value!r}")
    if hi is not None and (value > hi or (meta["hi_open"] and value == hi)):
        bound = f"< {hi}" if meta["hi_open"] else f"<= {hi}"
        raise UserError(f"params: {key} must be {bound}, got {value!r}")


# Keys that left their group: an old params.yaml, recipe or `dvc exp` names them where they were.
MOVED = {"train.device": "runtime.device", "train.threads": "runtime.threads",
         "train.cpu_bf16": "runtime.cpu_bf16"}
# Keys that are gone, and why: an old params.yaml, recipe or `dvc exp run -S` names them.
# Results of what was measured and dropped: benchmarks/README.md, "Tried and dropped".
REMOVED = {
    "train.refit": "measured no better: training on the validation images too changed nothing "
                   "measurable",
    "train.res_max": "measured no better: ending the resolution ramp below full size changed "
                     "nothing measurable",
    "train.upsample": "never measured better: every recipe kept 1.0",
    "sample.bad_files": "always on: the sample always holds a broken, an empty and a hidden "
                        "file, as scraped folders do",
    "evaluate.batch_size": "a speed setting, not part of any result: inference runs in batches "
                           "of 128",
    "embed": "the group is gone: PaCMAP's n_neighbors is fixed at 10 (its default), and the "
             "evaluate stage's pass over every image makes the embeddings",
    "suggest.queue_size": "fixed: the review queue holds the 200 images most worth an answer",
    "suggest.cluster_size": "fixed: a queue cluster holds at most 24 images",
    "train.t_mult": "every recipe kept 2 (the reference's restart cycles double); now fixed",
    "train.grad_clip": "every recipe kept 1.0 (the reference's); now fixed",
    "train.res_ramp_end": "every recipe kept 0.75; the ramp now always reaches full size at "
                          "75% of the epochs",
    "suggest.page_order": "measured no better: the uncertain and mixed orders verified fewer "
                          "images per minute at about the same accuracy; pages always start "
                          "from the most confident images",
    "suggest.uncertain_share": "measured no better: it set the mixed page order, which is gone",
    "review.fresh_votes": "measured no better: rebuilding the pages after every page gave no "
                          "fewer wrong proposals",
    "review.rebuild_on_swap": "measured no better: pages built again at a swap met more wrong "
                              "proposals over the pool",
    "review.swap_gate": "measured no better: passing over a lower-validating model met more "
                        "wrong proposals",
}


def _check_moved(keys: list[str], prefix: str) -> None:
    gone = [f"{prefix}.{k}" if prefix else k for k in keys
            if (f"{prefix}.{k}" if prefix else k) in REMOVED]
    if gone:
        raise UserError(f"params: {gone[0]} was removed ({REMOVED[gone[0]]}); delete it")
    moved = [f"{prefix}.{k}" for k in keys if f"{prefix}.{k}" in MOVED]
    if moved:
        raise UserError(f"params: {moved[0]} moved to {MOVED[moved[0]]} (the `runtime` group: "
                        f"where the code runs is not part of the recipe); move "
                        f"{', '.join(moved)} out of `{prefix}` into `runtime` "
                        "(docs/recipes.md, Runtime)")


def _build(cls, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise UserError(f"params: {prefix or 'params.yaml'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, raw)) - set(names))
    _check_moved(unknown, prefix)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise UserError(
            f"params: unknown key {prefix + '.' if prefix else ''}{unknown[0]}{where}; "
            f"allowed: {', '.join(names)}"
        )
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in raw:
            raise UserError(f"params: missing key {key} ({_type_name(hints[f.name])})")
        values[f.name] = _convert(key, raw[f.name], hints[f.name], f.metadata)
    return cls(**values)


def _convert(key: str, value: Any, tp, meta) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # bool | Literal[...]: a bool, or one of the names
        bool_ok = bool in typing.get_args(tp) and isinstance(value, bool)
        names = [a for a in typing.get_args(tp) if typing.get_origin(a) is Literal]
        if not bool_ok and not any(isinstance(value, str) and value in typing.get_args(n)
                                   for n in names):
            raise UserError(f"params: {key} must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if not isinstance(value, str) or value not in typing.get_args(tp):
            raise UserError(f"params: {key} must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        item = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise UserError(f"params: {key} must be {_type_name(tp)}, got {value!r}")
        return [_check_scalar(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if isinstance(tp, types.UnionType):  # pragma: no cover - not used
        raise TypeError(key)
    value = _check_scalar(key, value, tp)
    if meta:
        _check_range(key, value, meta)
    return value


def parse_override(item: str, where: str) -> tuple[list[str], Any]:
    """'GROUP.KEY=VALUE' (DVC's `-S` form, any depth) -> (key path, YAML-parsed value)."""
    key, eq, value = item.partition("=")
    path = key.strip().split(".")
    if not eq or len(path) < 2 or not all(path):
        raise UserError(f"{where}: {item!r} is not GROUP.KEY=VALUE (e.g. train.epochs=30)")
    try:
        return path, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: {item!r}: the value is not YAML ({e})") from None


def set_override(raw: dict, path: list[str], value: Any) -> None:
    """Set one key of a params document in place (a missing group is made; the strict check
    that follows refuses a key params.yaml does not have)."""
    node = raw
    for depth, k in enumerate(path[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise UserError(f"params: {'.'.join(path)}: {'.'.join(path[:depth + 1])} is a "
                            "value, not a group")
    node[path[-1]] = value


def _check_relations(p: Params) -> None:
    """Constraints between keys that a per-key range cannot express."""
    for i, item in enumerate(p.review.background_set):
        parse_override(item, f"params: review.background_set[{i}]")
    if not p.prepare.data_dir.strip():
        raise UserError("params: prepare.data_dir must name the dataset folder (e.g. "
                        "data/raw/sample), got an empty string")
    if len(p.base.classes) != 2 or len(set(p.base.classes)) != 2:
        raise UserError(f"params: base.classes must be two distinct names, got {p.base.classes}")
    reserved = {"undefined", "remove"} & set(p.base.classes)
    if reserved:
        raise UserError(f"params: base.classes cannot use the reserved name {sorted(reserved)[0]}")
    for name in p.base.classes:  # each is a folder name under train128/ and test128/
        if not name.strip() or name != name.strip() or name.startswith(".") \
                or any(c in name for c in "/\\\0"):
            raise UserError(f"params: base.classes: {name!r} is not usable as a folder name "
                            "(non-empty, no leading dot or surrounding spaces, no / or \\)")
    a = p.train.augment
    if a.scale_min > a.scale_max:
        raise UserError(
            f"params: train.augment.scale_min ({a.scale_min}) must be <= "
            f"train.augment.scale_max ({a.scale_max})"
        )
    if a.resize < p.base.image_size:
        raise UserError(
            f"params: train.augment.resize ({a.resize}) must be >= base.image_size "
            f"({p.base.image_size})"
        )
    _check_recipe(p.train, p.base.image_size)
    if not p.train.head or any(h < 1 for h in p.train.head):
        raise UserError(f"params: train.head must be a non-empty list of sizes >= 1, "
                        f"got {p.train.head}")


def _check_recipe(t: Train, image_size: int) -> None:
    if t.scheduler == "onecycle" and t.warmup_epochs > 0:
        raise UserError("params: train.warmup_epochs must be 0 with train.scheduler 'onecycle' "
                        "(one-cycle has its own warm-up, the first 15% of the steps)")
    if t.res_min and not 32 <= t.res_min <= image_size:
        raise UserError(f"params: train.res_min ({t.res_min}) must be 0 (off) or between 32 and "
                        f"base.image_size ({image_size})")
    if t.res_ramp_start > RES_RAMP_END:
        raise UserError(f"params: train.res_ramp_start ({t.res_ramp_start}) must be <= "
                        f"{RES_RAMP_END} (where the ramp reaches full size)")


def parse_params(raw: Any) -> Params:
    """Build Params from an already-parsed YAML document, or raise UserError."""
    params = _build(Params, raw, "")
    _check_relations(params)
    return params


def read_yaml_file(path: str | Path, what: str) -> Any:
    """A YAML file's document, read strictly (load_yaml); `what` names the file in errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror})") from e
    return load_yaml(text, str(path))


def read_recipe(path: str | Path) -> dict:
    """A recipe file's complete `train` group, checked as strictly as params.yaml's.

    A recipe is either a complete `train` group (recipes/reference.yaml) or `base: NAME` (the
    recipe NAME.yaml in the same folder) with a `train` group of only the keys it changes,
    merged onto the base's group (a nested group such as augment key by key)."""
    return recipe_group(read_yaml_file(path, "recipe"), Path(path))


def recipe_group(doc: Any, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The complete `train` group of a recipe document read from `path` (errors name it)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("train"), dict) \
            or not set(map(str, doc)) <= {"base", "train"}:
        got = sorted(map(str, doc)) if isinstance(doc, dict) else doc
        raise UserError(f"{path}: a recipe holds one group, `train`, and optionally `base: NAME` "
                        f"(the recipe NAME.yaml beside it that this one changes); got {got!r}")
    group = doc["train"]
    if "base" in doc:
        group = merge_group(_base_group(path, doc["base"], seen), group)
    try:
        _build(Train, group, "train")
    except UserError as e:
        raise UserError(f"{path}: {e}") from e
    return group


def _base_group(path: Path, name: Any, seen: tuple[Path, ...]) -> dict:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name \
            or name.endswith((".yaml", ".yml")):
        raise UserError(f"{path}: base must name a recipe beside it without .yaml (e.g. "
                        f"`base: reference` for recipes/reference.yaml), got {name!r}")
    base = path.parent / f"{name}.yaml"
    chain = (*seen, path.resolve())
    if base.resolve() in chain:
        raise UserError(f"{path}: base {name} leads back to {base}: recipes form a circle")
    return recipe_group(read_yaml_file(base, f"the base recipe of {path}"), base, chain)


def merge_group(base: dict, changes: dict) -> dict:
    """`changes` over `base`, nested groups key by key (a new dict; neither is changed)."""
    out = dict(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merge_group(base[key], value) if both else value
    return out


def load_params(path: str | Path = PARAMS) -> Params:
    raw = read_yaml_file(path, "params file")
    try:
        return parse_params(raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from e


INT_TAG = "tag:yaml.org,2002:int"


def load_yaml(text: str, name: str) -> Any:
    """A params or recipe file, safely, refusing what PyYAML would take silently or with a
    traceback: a key given twice (PyYAML keeps the last; DVC refuses the file) and an integer
    too long for Python to read (over 4300 digits). Errors name the file, key and line."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters here already
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(loader, node, "", name)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise UserError(f"{name}: not valid YAML: {e}") from e
    finally:
        if loader is not None:
            loader.dispose()


def _check_node(loader: yaml.SafeLoader, node: yaml.Node, key: str, name: str) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for k, v in node.value:
            label = k.value if isinstance(k, yaml.ScalarNode) else None
            line = k.start_mark.line + 1
            full = f"{key}.{label}" if key else str(label)
            if label is not None and label in first:
                raise UserError(f"{name}: duplicate key {full} at lines {first[label]} and "
                                f"{line}; give each key once")
            first[label] = line
            _check_node(loader, v, full, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_node(loader, v, f"{key}[{i}]", name)
    elif isinstance(node, yaml.ScalarNode) and node.tag == INT_TAG:
        try:
            loader.construct_yaml_int(node)
        except ValueError:
            raise UserError(f"{name}: {key or 'the document'} (line {node.start_mark.line + 1}): "
                            f"an integer of {len(node.value)} digits is too large to read"
                            ) from None


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
