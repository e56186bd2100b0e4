"""Progress of long work: a bar with an ETA on a terminal, plain lines in a log.

The bar (tqdm, on stderr) shows only when stderr is a terminal: tqdm's `disable=None` turns it
off otherwise, which under `dvc repro > run.log 2>&1`, `dvc exp run --queue` or CI would leave a
log with nothing between a stage's start and its end. So when stdout is not a terminal, the
same work also prints lines to stdout: one per epoch for training, and for other work at most
one every LOG_EVERY_S seconds plus one at the end, each with the time spent and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

LOG_EVERY_S = 30.0


def logging_lines(stream=None) -> bool:
    """True when progress should also be written as lines (stdout is a file or a pipe)."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not (isatty and isatty())


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the average rate so far (None before anything is done)."""
    if done <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / done


def status(what: str, done: int, total: int, unit: str, elapsed: float) -> str:
    left = eta(done, total, elapsed)
    tail = f", about {duration(left)} left" if left is not None and done < total else ""
    return f"{what}: {done}/{total} {unit}, {duration(elapsed)} elapsed{tail}"


class Progress:
    """Counts units of work; a tqdm bar on a terminal, throttled lines in a log.

    `update(n)` is the callback long loops take (engine.fit's and predict_manifest's progress);
    every_s=None leaves every line to the caller (training prints one per epoch).
    """

    def __init__(self, what: str, total: int, unit: str = "img", log: bool | None = None,
                 every_s: float | None = LOG_EVERY_S, leave: bool = True,
                 clock: Callable[[], float] = time.monotonic, out=None):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.log = logging_lines() if log is None else log
        self.clock, self.out = clock, out
        self.done = 0
        self.start = self.last_line = clock()
        self.bar = tqdm(total=total, unit=unit, desc=what, disable=None, leave=leave,
                        file=sys.stderr, dynamic_ncols=True)

    def print(self, line: str) -> None:
        """A line in the log; above the bar on a terminal, so neither garbles the other."""
        if self.bar.disable:
            print(line, file=self.out or sys.stdout, flush=True)
        else:
            self.bar.write(line, file=self.out or sys.stdout)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = self.clock()
        if (self.log and self.every_s is not None and self.done < self.total
                and now - self.last_line >= self.every_s):
            self.last_line = now
            self.print(status(self.what, self.done, self.total, self.unit, now - self.start))

    def postfix(self, **values) -> None:
        self.bar.set_postfix(**values)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def close(self) -> None:
        self.bar.close()
        if self.log and self.every_s is not None:
            self.print(f"{self.what}: {self.done} {self.unit} in {duration(self.elapsed())}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.bar.close()


@contextmanager
def timed(what: str, out=None) -> Iterator[None]:
    """For work with nothing to count (a PaCMAP fit): a line when it starts and one when it
    ends, on a terminal and in a log alike."""
    start = time.monotonic()
    print(f"{what} ...", file=out or sys.stdout, flush=True)
    yield
    print(f"{what}: done in {duration(time.monotonic() - start)}", file=out or sys.stdout,
          flush=True)

