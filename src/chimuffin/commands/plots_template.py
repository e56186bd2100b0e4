"""`chimuffin plots-template`: write the HTML template that makes `dvc plots show` and
`dvc plots diff` work offline (`make setup` runs it).

.dvc/config names the file (plots.html_template, relative to .dvc/); it is generated, not
committed, because it inlines about 0.8 MB of Vega, Vega-Lite and vega-embed from the pinned
Python package django-js-lib-vega-embed.
"""

from __future__ import annotations

from chimuffin import paths


def register(sub) -> None:
    p = sub.add_parser("plots-template", help="write the offline HTML template for `dvc plots`",
                       description=__doc__)
    p.add_argument("--output", "-o", default=paths.PLOTS_TEMPLATE,
                   help="file to write (default %(default)s, where .dvc/config points)")
    p.set_defaults(func=run)


def run(args) -> int:
    from chimuffin.report.plots_page import write_template

    out = write_template(args.output)
    print(f"plots-template: wrote {out} ({out.stat().st_size / 1e6:.1f} MB); `dvc plots show` "
          "now renders without network")
    return 0
