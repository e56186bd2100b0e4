"""`chimuffin review`: verify suggested labels page by page, or label from the embedding plot, in
a local page on http://127.0.0.1:PORT (127.0.0.1 only, works offline). Every answer is written at
once to the label file; the undo history and pace are kept in a git-ignored state file.
"""

from __future__ import annotations

import errno
from pathlib import Path

from chimuffin import paths
from chimuffin.commands.final import where as final_where
from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.proc import sigterm_as_interrupt
from chimuffin.retrain.final import Finisher
from chimuffin.retrain.retrainer import Retrainer
from chimuffin.review.data import Paths, ReviewData
from chimuffin.review.heatmap_route import PageHeatmaps
from chimuffin.review.history import STATE_FILE
from chimuffin.review.server import HOST, make_server
from chimuffin.review.validation import Validation


def register(sub) -> None:
    p = sub.add_parser("review", help="verify and label images in a local page (127.0.0.1 only, "
                       "works offline)", description=__doc__)
    p.add_argument("--port", type=int, default=8765,
                   help="port on 127.0.0.1; 0 picks a free one (default: %(default)s)")
    p.add_argument("--params", default=paths.PARAMS, help="params file (default: %(default)s)")
    p.add_argument("--decisions", default=paths.DECISIONS,
                   help="the label file the page writes (default: %(default)s)")
    p.add_argument("--state", default=STATE_FILE,
                   help="undo history and pace, git-ignored (default: %(default)s)")
    p.add_argument("--no-retrain", action="store_true",
                   help="no background retraining (params.yaml `review`), not even on demand")
    p.add_argument("--open", action="store_true",
                   help="open the page in the default browser (default: %(default)s)")
    p.set_defaults(func=run)


def bind(data: ReviewData, port: int, retrainer=None, heatmaps=None, validation=None,
         finisher=None):
    try:
        return make_server(data, port, retrainer=retrainer, heatmaps=heatmaps,
                           validation=validation, finisher=finisher)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {HOST} is in use (another `chimuffin review`?); "
                            "pick another with --port N, or --port 0 for a free one") from None
        raise UserError(f"cannot listen on {HOST}:{port} ({e.strerror or e}); pick another "
                        "with --port N, or --port 0 for a free one") from None


def stop_retraining(retrainer: Retrainer):
    """What the final model does first: background retraining stops for the rest of the
    session (the final run takes the cores)."""
    return lambda: retrainer.stop(why="the final model is training")


def run(args) -> int:
    root = Path.cwd()
    params = load_params(args.params)
    data_dir = Path(params.prepare.data_dir)
    data = ReviewData(Paths.under(root, args.params, args.decisions, args.state),
                      params.base.classes, data_dir if data_dir.is_absolute() else root / data_dir)
    heatmaps = PageHeatmaps(root / paths.MODEL, data.image_file, params.base.classes)
    validation = Validation(root, root / args.decisions, params.base.classes, params.base.seed,
                            params.review.validation_size, params.suggest.page_size)
    retrainer = None
    if not args.no_retrain:
        retrainer = Retrainer(root, root / args.params, root / args.decisions,
                              params.base.classes, params.review.retrain_every,
                              params.review.round_recipe, data.proposals.models[0].labels,
                              on_done=validation.after_swap(heatmaps.after_swap(
                                  data.swap_in, lambda: retrainer.last_weights())),
                              warm_recipe=params.review.warm_recipe)
    finisher = Finisher(final_where(root, args.params, args.decisions, None),
                        before=None if retrainer is None else stop_retraining(retrainer))
    server = bind(data, args.port, retrainer, heatmaps, validation, finisher)
    url = f"http://{HOST}:{server.server_address[1]}/"
    pages = f"{len(data.page_list)} pages to verify" if data.pages_error is None \
        else f"no pages ({data.pages_error})"
    print(f"review: {len(data.points)} images, {pages}, {len(data.queue)} review requests; "
          f"serving {url} (Ctrl-C to stop); labels go to {args.decisions}", flush=True)
    if retrainer is not None:
        every = params.review.retrain_every
        when = f"every {every} new decisions and on demand" if every else "on demand"
        recipe = params.review.round_recipe or "params.yaml's train group"
        warm = params.review.warm_recipe
        recipe += f", then warm starts with {warm}" if warm else ""
        print(f"review: background retraining {when}, recipe {recipe} (--no-retrain: off)",
              flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        with sigterm_as_interrupt():
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        finisher.stop()  # its copy is removed; the workspace was never written
        if retrainer is not None:
            retrainer.stop()  # the run's copy is removed; the workspace was never written
        heatmaps.close()
    return 0
