"""`dvc plots show/diff` with no network: the template inlines Vega from a pinned package, and
every declared plot renders in headless Chromium with every non-file request blocked. Also the
short experiment table (`make exp`)."""

from __future__ import annotations

import configparser
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from chimuffin import paths
from chimuffin.errors import UserError
from chimuffin.report.plots_page import SCRIPTS, build_template, inline_script, read_scripts
from tests.helpers.repo import REPO, run

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_template_inlines_vega_and_keeps_only_dvcs_page_placeholders():
    scripts = read_scripts()
    assert list(scripts) == list(SCRIPTS) and all(len(js) > 50_000 for js in scripts.values())
    page = build_template(scripts, "note -- here")
    assert page.count("{plot_divs}") == 1 and "{refresh_tag}" in page
    assert "{scripts}" not in page  # DVC's CDN <script> tags are left out
    assert page.count("<script>") == len(SCRIPTS) and "<script src" not in page
    # vega first: vega-lite and vega-embed attach to its global
    positions = [page.index(f"/* {name} */") for name in SCRIPTS]
    assert positions == sorted(positions)
    assert "<!-- note - here -->" in page  # "--" cannot end the comment early


def test_inline_script_refuses_what_would_break_the_page():
    with pytest.raises(UserError, match="</script"):
        inline_script("x.js", "var a = '</SCRIPT>';")
    with pytest.raises(UserError, match="plot_divs"):
        inline_script("x.js", "var a = '{plot_divs}';")


def test_dvc_config_points_at_the_generated_template():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["plots"]["html_template"] == Path(paths.PLOTS_TEMPLATE).name
    assert Path(paths.PLOTS_TEMPLATE).parent == Path(".dvc")
    ignored = (REPO / ".dvc" / ".gitignore").read_text().split()
    assert f"/{Path(paths.PLOTS_TEMPLATE).name}" in ignored  # generated, never committed
    makefile = (REPO / "Makefile").read_text()
    assert f"PLOTS_TEMPLATE := {paths.PLOTS_TEMPLATE}" in makefile
    assert "setup: $(BIN)/chimuffin browser $(PLOTS_TEMPLATE)" in makefile


def render_offline(page_file: Path) -> tuple[list[dict], list[str], list[str]]:
    """Open the page from disk with every non-file request aborted; per plot div: vega marks
    drawn and image widths; plus the blocked requests and page errors."""
    from playwright.sync_api import sync_playwright

    blocked, errors = [], []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_files)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri())
            page.wait_for_function("""() => [...document.querySelectorAll('body > div[id]')]
                .every(d => d.querySelector('img') || d.querySelector('.marks'))""",
                                   timeout=30_000)
            plots = page.evaluate("""() => [...document.querySelectorAll('body > div[id]')]
                .map(d => ({id: d.id, marks: d.querySelectorAll('.marks').length,
                            images: [...d.querySelectorAll('img')].map(i => i.naturalWidth)}))""")
        finally:
            browser.close()
    return plots, blocked, errors


def declared_plots(repo: Path) -> list[str]:
    return [next(iter(p)) if isinstance(p, dict) else p
            for p in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]]


def dom_id(name: str) -> str:
    """dvc-render's div id for a plot name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def check_page(page_file: Path, repo: Path, revisions: int) -> None:
    plots, blocked, errors = render_offline(page_file)
    names = declared_plots(repo)
    assert [p["id"] for p in plots] == [dom_id(n) for n in names]
    for name, p in zip(names, plots, strict=True):
        if name.endswith(".png"):
            assert p["images"] == [p["images"][0]] * revisions and p["images"][0] > 0, p
        else:
            assert p["marks"] == 1 and not p["images"], p  # a vega chart was drawn
    assert errors == [] and blocked == []


@pytest.mark.slow
def test_dvc_plots_show_and_diff_render_offline_and_exp_table_is_short(tiny_repo, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`make browser`)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    repo = tiny_repo
    # a fresh clone after `make setup`: the committed .dvc/config and the generated template
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / ".gitignore", repo / ".dvc" / ".gitignore")
    run([str(Path(sys.executable).parent / "chimuffin"), "plots-template"], repo)
    assert run(["git", "status", "--porcelain", ".dvc"], repo).stdout.split() == \
        ["M", ".dvc/.gitignore", "M", ".dvc/config"]  # the template itself stays untracked
    run(["dvc", "repro"], repo)
    names = declared_plots(repo)
    for split in ("validation", "test"):
        assert {f"Confusion matrix ({split}, saved model)", f"ROC ({split}, saved model)",
                f"Precision-recall ({split}, saved model)"} <= set(names)

    run(["dvc", "plots", "show", "-o", str(tmp_path / "show")], repo)
    check_page(tmp_path / "show" / "index.html", repo, revisions=1)

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    run(["dvc", "exp", "run", "-S", "train.lr=0.001", "-n", "lr-1e-3"], repo)
    run(["dvc", "plots", "diff", "HEAD", "lr-1e-3", "-o", str(tmp_path / "diff")], repo)
    check_page(tmp_path / "diff" / "index.html", repo, revisions=2)

    # `make exp`: experiment, date, the param that differs, the saved model's accuracies, as
    # Markdown by default: piped and at 60 columns, no column is cut to "..."
    table = run(["make", "-s", "-f", str(REPO / "Makefile"), "exp",
                 f"BIN={Path(sys.executable).parent}"], repo, env={"COLUMNS": "60"}).stdout
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == ["Experiment", "Created", "test.accuracy", "val.accuracy", "train.lr"]
    assert "lr-1e-3" in table and "0.001" in table
