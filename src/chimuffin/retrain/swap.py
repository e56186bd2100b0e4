"""Which model proposes the review pages: the pipeline's outputs first, then each background
model as it finishes, from the next page on. The review page and the sitting swap the same
way (Proposals): a finished model's pages for the images not verified yet, in its order,
numbered after every page number used so far (the page keeps marks per page number, and a
page of an earlier model stays acceptable by its number); each model's tally of images
verified on its pages and proposals the person corrected."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import pandas as pd


@dataclass
class Model:
    name: str
    labels: int                 # person decisions it was trained on
    finished: float | None      # when (seconds since the epoch), if known
    val_accuracy: float | None
    val_n: int | None = None
    verified: int = 0           # images verified on its pages
    wrong: int = 0              # of those, proposals the person corrected


def with_sizes(pages: pd.DataFrame) -> pd.DataFrame:
    """`built`: the images its model put on each page (a page may be shown cut)."""
    return pages.assign(built=pages.groupby("page")["path"].transform("size").astype("int64"))


def pages_from(pages: pd.DataFrame, verified: set[str], first_page: int) -> pd.DataFrame:
    """A model's pages for the images not verified yet: verified images dropped (and pages
    they emptied), the rest in the model's order, renumbered from `first_page`."""
    left = with_sizes(pages)
    left = left[~left["path"].isin(verified)].copy()
    order = {p: first_page + i for i, p in enumerate(dict.fromkeys(left["page"]))}
    left["page"] = left["page"].map(order).astype("int64")
    return left.sort_values(["page", "position"], kind="stable").reset_index(drop=True)


class Proposals:
    """The models that proposed pages this session, the pages proposed now, and which model
    proposed each page number. Thread-safe: a background run swaps from its own thread."""

    def __init__(self, pages: pd.DataFrame | None, model: Model):
        self.lock = threading.Lock()
        self.models = [model]
        self.pages = None if pages is None else with_sizes(pages)
        self.page_model = {} if pages is None else {int(p): 0 for p in pages["page"]}
        self.version = 0  # one more each time the pages are replaced

    def swap(self, pages: pd.DataFrame, model: Model, verified: set[str]) -> pd.DataFrame:
        """`model` proposes from now on: its `pages` for the images not in `verified`."""
        with self.lock:
            new = pages_from(pages, verified, max(self.page_model, default=-1) + 1)
            self.models.append(model)
            self.page_model.update({int(p): len(self.models) - 1 for p in new["page"]})
            self.pages, self.version = new, self.version + 1
            return new

    def proposer(self) -> Model:
        with self.lock:
            return self.models[-1]

    def model_of(self, page: int) -> int:
        return self.page_model.get(page, 0)

    def tally(self, page: int, images: int, wrong: int) -> None:
        """A page accepted (or, negative, its acceptance undone): its model's tally."""
        with self.lock:
            model = self.models[self.model_of(page)]
            model.verified = max(0, model.verified + images)
            model.wrong = max(0, model.wrong + wrong)

    def public(self) -> dict:
        with self.lock:
            return {"version": self.version, "current": len(self.models) - 1,
                    "list": [asdict(m) for m in self.models]}
