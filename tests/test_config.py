import copy

import pytest
import yaml

from chimuffin.config import (
    REMOVED,
    load_params,
    parse_override,
    parse_params,
    read_recipe,
    set_override,
)
from chimuffin.errors import UserError
from tests.helpers.repo import REPO, default_params_dict


def test_repo_params_load_and_match_reference_recipe():
    p = load_params(REPO / "params.yaml")
    t = p.train
    assert (t.lr, t.weight_decay, t.batch_size, t.epochs) == (5e-4, 5e-4, 16, 70)
    assert (t.scheduler, t.t0) == ("cosine_restarts", 10)
    assert t.head == [256, 128] and t.dropout == 0.3
    a = t.augment
    assert (a.resize, a.flip_p, a.rotation_deg, a.shear_deg) == (136, 0.5, 10, 8)
    assert (a.scale_min, a.scale_max, a.jitter, a.erase_p) == (0.85, 1.15, 0.15, 0.05)
    assert p.base.classes == ["chihuahua", "muffin"]


def mutated(path: list[str], value):
    d = copy.deepcopy(default_params_dict())
    node = d
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value,message", [
    (["train", "lrr"], 0.1, "unknown key train.lrr"),
    (["trian"], {}, "unknown key trian"),
    (["train", "lr"], KeyError, "missing key train.lr"),
    (["train", "lr"], 0, "train.lr must be > 0.0"),
    (["train", "lr"], -1e-3, "train.lr must be > 0.0"),
    (["train", "lr"], "fast", "train.lr must be a number"),
    (["train", "epochs"], 2.5, "train.epochs must be an integer"),
    (["train", "epochs"], True, "train.epochs must be an integer"),
    (["train", "scheduler"], "step", "train.scheduler must be one of"),
    (["train", "augment", "flip_p"], 1.5, "train.augment.flip_p must be <= 1.0"),
    (["train", "augment", "zoom"], 1, "unknown key train.augment.zoom"),
    (["train", "augment", "scale_min"], 1.3, "scale_min (1.3) must be <="),
    (["prepare", "val_fraction"], 0.95, "prepare.val_fraction must be <= 0.9"),
    (["base", "classes"], ["dog"], "base.classes must be two distinct names"),
    (["base", "classes"], ["dog", "undefined"], "reserved name undefined"),
    (["clean", "dedupe"], "yes", "clean.dedupe must be true or false"),
    (["train", "head"], [256, "x"], "train.head[1] must be an integer"),
    (["runtime", "threads"], KeyError, "missing key runtime.threads"),
    (["runtime", "device"], "tpu", "runtime.device must be one of"),
    (["runtime"], KeyError, "missing key runtime"),
])
def test_bad_params_name_the_key(path, value, message):
    with pytest.raises(UserError) as e:
        parse_params(mutated(path, value))
    assert message in str(e.value)


def test_load_params_names_file_and_yaml_errors(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("base: [unclosed\n")
    with pytest.raises(UserError, match="params.yaml: not valid YAML"):
        load_params(f)
    f.write_text(yaml.safe_dump(mutated(["train", "batch"], 3)))
    with pytest.raises(UserError, match=r"params.yaml: params: unknown key train.batch"):
        load_params(f)
    with pytest.raises(UserError, match="cannot read params file"):
        load_params(tmp_path / "missing.yaml")


def test_ints_are_accepted_for_floats():
    p = parse_params(mutated(["train", "lr"], 1))
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float)


def params_text() -> str:
    return (REPO / "params.yaml").read_text()


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_key_given_twice_is_refused_naming_the_key_and_both_lines(tmp_path):
    text = params_text()
    first = line_of(text, "  lr: ")
    lines = text.splitlines()
    lines.insert(first, lines[first - 1].replace("0.0005", "9.5"))  # `lr: 9.5` right after
    f = tmp_path / "params.yaml"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"params.yaml: duplicate key train.lr at lines "
                       rf"{first} and {first + 1}; give each key once"):
        load_params(f)
    # a recipe file too
    from chimuffin.report.recipe_diff import load_reference
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  lr: 0.001\n  epochs: 3\n  lr: 9.5\n")
    with pytest.raises(UserError, match="recipe.yaml: duplicate key train.lr at lines 2 and 4"):
        load_reference(recipe)


def test_a_5000_digit_integer_is_a_clear_error_naming_the_key(tmp_path):
    text = params_text()
    line = line_of(text, "  epochs: ")
    f = tmp_path / "params.yaml"
    f.write_text(text.replace("  epochs: 70 ", "  epochs: " + "9" * 5000 + " ", 1))
    with pytest.raises(UserError, match=rf"params.yaml: train.epochs \(line {line}\): an "
                       "integer of 5000 digits is too large to read"):
        load_params(f)


def test_an_empty_data_dir_is_refused_naming_the_key():
    with pytest.raises(UserError, match="prepare.data_dir must name the dataset folder"):
        parse_params(mutated(["prepare", "data_dir"], ""))


@pytest.mark.parametrize("key", ["device", "threads", "cpu_bf16"])
def test_runtime_keys_left_in_train_say_where_they_moved(key):
    """An old params.yaml (or `dvc exp apply` of an old experiment) that still has train.device,
    train.threads or train.cpu_bf16 is refused with the key's new place."""
    old = mutated(["train", key], default_params_dict()["runtime"][key])
    with pytest.raises(UserError, match=rf"train\.{key} moved to runtime\.{key}"):
        parse_params(old)


def test_an_old_embed_group_is_refused_saying_why_it_is_gone():
    """An old params.yaml that still has the embed group (batch_size, n_neighbors) is told why
    it went, not left with keys nothing reads."""
    old = {**default_params_dict(), "embed": {"batch_size": 128, "n_neighbors": 10}}
    with pytest.raises(UserError, match=r"embed was removed \(the group is gone: PaCMAP's "
                       r"n_neighbors is fixed at 10"):
        parse_params(old)


@pytest.mark.parametrize("key", sorted(REMOVED))
def test_every_removed_key_is_refused_naming_it_and_why(tmp_path, key):
    """A removed key in a user's params.yaml, or set by `dvc exp run -S KEY=...` (which writes it
    into params.yaml), is refused with the file, the key and why it went."""
    raw = default_params_dict()
    # a removed group: any of its old keys brings it back
    set_override(raw, *parse_override(f"{key if '.' in key else key + '.n_neighbors'}=0", "-S"))
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as e:
        load_params(f)
    assert f"params.yaml: params: {key} was removed ({REMOVED[key]}); delete it" in str(e.value)
    group, _, name = key.rpartition(".")
    params_now = default_params_dict()
    assert name not in (params_now[group] if group else params_now)  # gone from params.yaml too


def test_runtime_is_its_own_group_and_not_in_any_recipe():
    p = load_params(REPO / "params.yaml")
    assert (p.runtime.device, p.runtime.threads, p.runtime.cpu_bf16) == ("auto", 0, "auto")
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert not {"device", "threads", "cpu_bf16"} & set(read_recipe(recipe)), recipe
