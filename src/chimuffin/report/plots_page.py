"""An HTML template for `dvc plots show/diff` that renders with no network.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN; offline its Vega charts do
not render at all. This template inlines the same libraries (same major versions) from the
pinned Python package django-js-lib-vega-embed (it ships the original minified .js files and
nothing else runs: Django is never imported), so the page works when opened from disk.
DVC reads it through `.dvc/config`'s `plots.html_template`.
"""

from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path

from chimuffin import atomic
from chimuffin.errors import UserError

PACKAGE = "django-js-lib-vega-embed"
# Load order matters: vega-lite needs vega, vega-embed needs both (UMD globals on window).
SCRIPTS = ("vega5.js", "vega-lite5.js", "vega-embed6.js")
# DVC fills these by plain text replacement; {scripts} (the CDN tags) is left out on purpose.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC Plot</title>
<!-- {note} -->
{scripts}
<style>
  table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def read_scripts() -> dict[str, str]:
    """The .js files of the installed package, by name."""
    try:
        folder = resources.files("js_lib_vega_embed") / "static" / "js_lib_vega_embed"
        return {name: (folder / name).read_text(encoding="utf-8") for name in SCRIPTS}
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise UserError(f"the Python package {PACKAGE} (Vega for offline plots) is not "
                        f"installed or incomplete ({e}); run `make setup` or "
                        f"`pip install -e .`") from e


def inline_script(name: str, js: str) -> str:
    """A <script> element holding js; refuses code that would end the element early or that
    DVC's placeholder replacement would alter."""
    bad = [p for p in PLACEHOLDERS if p in js] + (["</script"] if "</script" in js.lower()
                                                   else [])
    if bad:
        raise UserError(f"{PACKAGE}: {name} contains {', '.join(bad)}; it cannot be inlined")
    return f"<script>/* {name} */\n{js}\n</script>"


def build_template(scripts: dict[str, str], note: str) -> str:
    """The page: DVC's placeholders {refresh_tag} and {plot_divs}, the scripts inlined."""
    body = "\n".join(inline_script(name, scripts[name]) for name in SCRIPTS)
    return PAGE.format(note=note.replace("--", "-"), scripts=body)


def write_template(path: str | Path) -> Path:
    version = metadata.version(PACKAGE)
    note = (f"Vega, Vega-Lite and vega-embed inlined from the Python package {PACKAGE}=="
            f"{version} by `chimuffin plots-template`: this page loads nothing from the network")
    atomic.write_text(path, build_template(read_scripts(), note))
    return Path(path)
