"""Progress of a stage's long loops on stderr: a bar on a terminal, a few plain lines in a log.

A stage's package function wraps its loop in a `ProgressBar` and tells it what is done:

    with ProgressBar("preprocess: decoding", total=n, unit="image") as bar:
        for block in bar.over(blocks, size=len):
            ...

On a terminal (`console.stderr_is_terminal`: stderr is one, or the watchdog's pipe to one)
it is a tqdm bar, updated in place with `\\r`; while it is drawn, other lines written to
sys.stderr (a warning) go above it, a line at a time. Elsewhere (DVC's log, CI, a test's
capture) it prints a plain line every `every_s` seconds and, when the loop ends without an
error, one line saying what it did: no `\\r`, and a quick loop prints just that one line.
A loop that fails prints nothing more of its own, so the error line stays the last word.
ProgressBar goes to stderr: stdout is each stage's result (JSON).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm
from tqdm.contrib import DummyTqdmFile

from dcgan.runtime.console import stderr_is_terminal

T = TypeVar("T")


class ProgressBar:
    """One loop's progress: `total` units of work named `unit` (singular), `initial` of them
    done already (a resumed training), reported as `what` (`stage: doing`)."""

    def __init__(self, what: str, total: int, unit: str = "image", initial: int = 0,
                 every_s: float = 60.0):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.n = self.initial = initial
        self.start = self.said = time.monotonic()
        self.bar: tqdm | None = None
        if stderr_is_terminal():
            # The terminal's width: stderr may be the watchdog's pipe, so it is asked of
            # stdout (or $COLUMNS).
            self.bar = tqdm(total=total, initial=initial, desc=what, unit=unit,
                            file=sys.stderr, ncols=shutil.get_terminal_size().columns,
                            mininterval=0.2, disable=False, dynamic_ncols=False)
            self._stderr, sys.stderr = sys.stderr, DummyTqdmFile(sys.stderr)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        self.close(done=kind is None)

    def over(self, items: Iterable[T], size: Callable[[T], int]) -> Iterator[T]:
        """`items`, counting `size(item)` units done after each."""
        for item in items:
            yield item
            self.update(size(item))

    def predicting(self, n: int, batch_size: int) -> object:
        """A Keras callback that counts the `n` images of one `predict()` as its batches end."""
        import keras  # here: preprocess, which imports this module, runs no TensorFlow

        start = self.n
        return keras.callbacks.LambdaCallback(on_predict_batch_end=lambda batch, logs: (
            self.update_to(start + min((batch + 1) * batch_size, n))))

    def describe(self, what: str) -> None:
        """Rename the loop, e.g. for the next epoch."""
        self.what = what
        if self.bar is not None:
            self.bar.set_description_str(what, refresh=False)

    def update(self, n: int = 1) -> None:
        """`n` more units done."""
        self.n = min(self.n + n, self.total)
        if self.bar is not None:
            self.bar.update(self.n - self.bar.n)
        elif time.monotonic() - self.said >= self.every_s:
            self._line(f"{self.n}/{self.total} {self.unit}s "
                       f"({100 * self.n // max(self.total, 1)}%), {self.elapsed()}{self._left()}")

    def update_to(self, n: int) -> None:
        """`n` units done in all."""
        self.update(n - self.n)

    def note(self, text: str) -> None:
        """Show `text` after the bar (the latest losses); plain lines leave it out."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def say(self, text: str) -> None:
        """A line that stays: above the bar, or a plain line (which restarts the clock)."""
        if self.bar is not None:
            self.bar.write(text, file=self._stderr)
        else:
            print(text, file=sys.stderr, flush=True)
            self.said = time.monotonic()

    def close(self, done: bool = True, summary: str | None = None) -> None:
        """End the bar, or print the last plain line (`summary`, else what was done) unless
        the loop failed (`done` False). A second call does nothing."""
        if self.bar is not None:
            sys.stderr = self._stderr  # before the bar's last write
            self.bar.close()
            self.bar, self.total = None, -1
        elif done and self.total >= 0:
            self._line(summary or f"{self.n - self.initial} {self.unit}s in {self.elapsed()}")
            self.total = -1

    def _line(self, text: str) -> None:
        self.say(f"{self.what}: {text}")

    def elapsed(self) -> str:
        """The time since the loop started, as plain lines write it."""
        return _duration(time.monotonic() - self.start)

    def _left(self) -> str:
        done, seconds = self.n - self.initial, time.monotonic() - self.start
        return f", about {_duration(seconds * (self.total - self.n) / done)} left" if done else ""


def _duration(seconds: float) -> str:
    """`4.2 s`, or tqdm's `12:34` (minutes) and `1:02:03` (hours)."""
    return f"{seconds:.1f} s" if seconds < 60 else tqdm.format_interval(seconds)

