"""Progress of long loops: a redrawn bar on a terminal, a few plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class Progress:
    """Wraps an iterable and reports how far it got.

    On a terminal the bar is redrawn in place on stderr; in a log file or a CI run it writes
    a line at every `log_fraction` of the way, so logs stay short.
    """

    def __init__(self, iterable: Iterable[T], total: Optional[int], desc: str,
                 logger: Optional[logging.Logger] = None, log_fraction: float = 0.25,
                 enabled: bool = True) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _len_or_none(iterable)
        self.desc = desc
        self.logger = logger or logging.getLogger("transreid")
        self.log_every = max(1, int((self.total or 0) * log_fraction)) if self.total else 0
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()

    def __iter__(self) -> Iterator[T]:
        start = time.perf_counter()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            if self.enabled:
                self._report(done, time.perf_counter() - start)
        if self.interactive:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _report(self, done: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.interactive:
            sys.stderr.write("\r" + self._bar(done, rate))
            sys.stderr.flush()
        elif self.log_every and (done % self.log_every == 0 or done == self.total):
            self.logger.info("%s: %d/%d (%.1f it/s)", self.desc, done, self.total, rate)

    def _bar(self, done: int, rate: float, width: int = 30) -> str:
        if not self.total:
            return f"{self.desc}: {done} ({rate:.1f} it/s)"
        filled = int(width * done / self.total)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        return (f"{self.desc}: [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{rate:.1f} it/s, {eta:.0f}s left ")


def _len_or_none(iterable) -> Optional[int]:
    try:
        return len(iterable)
    except TypeError:
        return None
