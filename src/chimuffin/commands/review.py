"""`chimuffin review`: the offline review page on http://127.0.0.1:PORT (see review/server.py)."""

from __future__ import annotations

from pathlib import Path

from chimuffin.config import load_params
from chimuffin.review.server import HOST, Paths, ReviewData, make_server


def register(sub) -> None:
    p = sub.add_parser("review", help="label images from the embedding plot in a local page "
                       "(127.0.0.1 only, works offline)")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--decisions", default="data/labels/decisions.csv")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=run)


def run(args) -> int:
    root = Path.cwd()
    params = load_params(args.params)
    data_dir = Path(params.prepare.data_dir)
    data = ReviewData(Paths.under(root, args.params, args.decisions), params.base.classes,
                      data_dir if data_dir.is_absolute() else root / data_dir)
    server = make_server(data, args.port)
    url = f"http://{HOST}:{server.server_address[1]}/"
    print(f"review: {len(data.points)} images, {len(data.queue)} review requests; serving {url} "
          f"(Ctrl-C to stop); labels go to {args.decisions}", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
