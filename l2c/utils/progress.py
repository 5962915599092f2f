"""Progress of long loops, in one place: a tqdm bar when a person watches a terminal, a plain line now and then in a
log or a pipe, nothing under --quiet.

A bar redraws many times a second; written into a log file every redraw becomes a line (hundreds per command). So when
stderr is not a terminal, `progress_bar` prints one line each time the loop has advanced another 10 % *and* a minute has
passed since the last line (whichever is rarer: at most about ten lines per loop, and none for a loop that ends within
the minute), then one closing line with the totals. Call sites use it as they would tqdm:

    for step in progress_bar(range(n), desc="train-model"):
        ...
    with progress_bar(total=len(todo), desc="sweep", unit="point") as bar:
        bar.update(1)
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm

LOG_FRACTION = 0.1  # a log line after each further tenth of the loop ...
LOG_INTERVAL_S = 60.0  # ... and no sooner than a minute after the previous line

_quiet = False


def set_quiet(quiet: bool) -> None:
    """No progress output at all (the CLI's --quiet)."""
    global _quiet
    _quiet = bool(quiet)


@contextmanager
def quiet(enabled: bool = True):
    """set_quiet(enabled) inside the block, the previous setting after it."""
    before = _quiet
    set_quiet(enabled)
    try:
        yield
    finally:
        set_quiet(before)


def progress_bar(iterable=None, total=None, desc: str = "", *, initial: int = 0, unit: str = "it", **kwargs):
    """tqdm(iterable, total=..., desc=...) for a terminal; a LogProgress in a log or pipe; a silent tqdm when quiet
    or disable=True. Every other tqdm keyword (leave, ...) is passed on; the result supports iteration, update,
    set_postfix, set_postfix_str, set_description, close and `with`."""
    if _quiet or kwargs.get("disable"):
        kwargs["disable"] = True
        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, **kwargs)
    if _is_terminal(sys.stderr):
        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, **kwargs)
    return LogProgress(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=kwargs.get("leave", True))


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class LogProgress:
    """tqdm's interface, printing a line per LOG_FRACTION of the loop and at most one per LOG_INTERVAL_S."""

    def __init__(self, iterable=None, total=None, desc: str = "", initial: int = 0, unit: str = "it", leave=True):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.leave = iterable, total, desc, unit, leave
        self.n = self._printed_n = self._initial = initial
        self._start = self._printed_t = time.monotonic()
        self._postfix = ""
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self):
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.close()
        self._closed = True  # an exception ends the loop without a closing line

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._printed_t < LOG_INTERVAL_S:
            return
        if self.total and (self.n - self._printed_n) < LOG_FRACTION * self.total - 1e-9:
            return
        if self.total and self.n >= self.total:
            return  # the closing line reports the end
        self._print(now)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh=True) -> None:
        self._postfix = str(s)

    def set_description(self, desc: str = "", refresh=True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave and self.n != self._printed_n:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        self._printed_n, self._printed_t = self.n, now
        elapsed = now - self._start
        if self.total:
            done = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.n) / rate if rate > 0 and self.n < self.total else None
        else:
            done, left = f"{self.n} {self.unit}", None
        parts = [done, f"{tqdm.format_interval(elapsed)} elapsed"]
        if left is not None:
            parts.append(f"about {tqdm.format_interval(left)} left")
        if self._postfix:
            parts.append(self._postfix)
        print(f"{self.desc or 'progress'}: {', '.join(parts)}", file=sys.stderr, flush=True)
