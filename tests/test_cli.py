"""The CLI explains itself: a version, a description for every command, help and defaults for
every option of the tools around the pipeline."""

from __future__ import annotations

import argparse
from importlib import metadata

import pytest

from chimuffin.cli import build_parser, main

# Commands whose every option must say what it does and its default.
DOCUMENTED = ["check-data", "dashboard", "export", "loop", "plots-template", "predict", "pull-3lc"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"chimuffin {metadata.version('chimuffin')}"


def test_every_command_has_a_description():
    commands = subcommands()
    assert {"review", "loop", "final", "check-data", "plots-template"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description and len(parser.description.strip()) > 20, name
        assert name in parser.format_usage()


@pytest.mark.parametrize("name", DOCUMENTED)
def test_every_option_has_help_and_shows_its_default(name):
    parser = subcommands()[name]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name} {label}: no help"
        text = parser._get_formatter()._expand_help(action)
        if action.required:  # e.g. predict's PATH...: nothing to default to
            continue
        assert "default" in text, f"{name} {label}: help does not say its default"
        if action.default not in (None, False):
            assert str(action.default) in text, f"{name} {label}: default not shown"


def test_export_defaults_to_onnx():
    parser = build_parser()
    plain = parser.parse_args(["export"])
    assert plain.func.__module__ == "chimuffin.commands.export" and plain.onnx is False
    assert parser.parse_args(["export", "--onnx"]).output == plain.output == "models/model.onnx"


def test_a_text_file_is_not_a_checkpoint_and_exit_is_2(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# chimuffin\n\nA project.\n")
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.jpg").write_bytes(b"not really")
    for command in (["predict", str(img)], ["export"]):
        assert main([*command, "--model", str(readme)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"chimuffin {command[0]}: error: {readme}: not a PyTorch checkpoint: a "
                       "text file (it starts with '# chimuffin'); use a model file written by "
                       "chimuffin's train stage")
        assert "could run code" not in err

