"""Progress of long loops: a tqdm bar on a terminal, a few plain log lines otherwise."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Iterable, Iterator, List, Optional, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    """Wraps an iterable and reports how far it got.

    On a terminal a tqdm bar is drawn on stderr, and the console lines of `logger` are printed
    above it instead of through it; in a log file or a CI run it writes a line at every
    `log_fraction` of the way, so logs stay short. With `enabled` False it reports nothing.
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
        if self.interactive:
            yield from self._bar()
        elif self.enabled and self.log_every:
            yield from self._logged()
        else:
            yield from self.iterable

    def _bar(self) -> Iterator[T]:
        with _console_lines_above_bar(self.logger):
            yield from tqdm(self.iterable, total=self.total, desc=self.desc, file=sys.stderr,
                            dynamic_ncols=True)

    def _logged(self) -> Iterator[T]:
        start = time.perf_counter()
        for done, item in enumerate(self.iterable, start=1):
            yield item
            if done % self.log_every == 0 or done == self.total:
                elapsed = time.perf_counter() - start
                rate = done / elapsed if elapsed > 0 else 0.0
                self.logger.info("%s: %d/%d (%.1f it/s)", self.desc, done, self.total, rate)


class _AboveTheBar:
    """A console stream whose writes tqdm prints above its bars instead of through them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _console_lines_above_bar(logger: logging.Logger) -> Iterator[None]:
    """Route the console handlers that `logger`'s records reach (setup_logger puts them on
    'transreid', not on 'transreid.train') through tqdm.write while a bar is shown; their
    levels, formats and filters stay as they are."""
    handlers = [handler for owner in _handler_owners(logger) for handler in owner.handlers
                if type(handler) is logging.StreamHandler
                and handler.stream in (sys.stdout, sys.stderr)]
    originals = [handler.setStream(_AboveTheBar(handler.stream)) for handler in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, originals):
            handler.setStream(stream)


def _handler_owners(logger: logging.Logger) -> List[logging.Logger]:
    """`logger` and the ancestors its records propagate to, as logging.Logger.callHandlers."""
    owners: List[logging.Logger] = []
    current: Optional[logging.Logger] = logger
    while current is not None:
        owners.append(current)
        current = current.parent if current.propagate else None
    return owners


def _len_or_none(iterable) -> Optional[int]:
    try:
        return len(iterable)
    except TypeError:
        return None
