"""No hang under torch.distributed: heartbeats through the c10d store, a watchdog and a barrier.

A rank that stops (SIGSTOP, a frozen node, a dead process whose peers did not notice) leaves
the others blocked inside a gloo/NCCL collective until the process group's timeout, which
train.py sets to hours so that rank 0 may evaluate while the others wait. Here every rank
runs two daemon threads:

- the pulse: every `interval_s` it increments `heartbeat/<rank>` in the store and reads the
  other ranks' counters. A counter rather than a timestamp, so that hosts' clocks need not agree:
  a rank is stale when its counter has not moved for `hang_timeout_s` of this process's
  monotonic clock;
- the judge: a thread cannot interrupt a blocked collective, so when another rank is stale, or
  the store has not answered for `hang_timeout_s` (the process that hosts it, rank 0 under
  `init_method=env://`, is stuck or gone), it logs a message naming the rank and ends this
  process with `os._exit(HANG_EXIT_CODE)`; torchrun then stops the remaining ranks.

The threads keep beating while the main thread evaluates, so a long evaluation on rank 0 does
not trip them; the other ranks wait for it in `wait_for_all` (instead of `dist.barrier()`),
which raises `DistributedHangError` naming the ranks that stopped before arriving.

A rank whose main thread is stuck but whose process runs (a deadlock in Python) keeps beating:
that is beyond a heartbeat; the process group's own timeout remains the last resort.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import torch.distributed as dist

from utils.errors import UserError

logger = logging.getLogger("transreid.dist")

HANG_EXIT_CODE = 124
"""Exit status of a process ended by the watchdog (that of coreutils' `timeout`)."""

DEFAULT_PREFIX = "transreid/watchdog"


class DistributedHangError(UserError, RuntimeError):
    """Another rank stopped (or the c10d store stopped answering) while this one waited for it."""


class RankWatchdog:
    """This rank's heartbeat and its watch over the other ranks' (see the module's doc).

    `start()` it once the process group exists; end with `finish()` (a last barrier, then
    `stop()`) before `dist.destroy_process_group()`, since ranks that leave stop beating. On
    an error path, `stop()` alone (or the `with` block) suffices.
    """

    def __init__(self, store: dist.Store, rank: int, world_size: int, hang_timeout_s: float,
                 interval_s: Optional[float] = None, prefix: str = DEFAULT_PREFIX,
                 on_hang: Optional[Callable[[str], None]] = None):
        """`on_hang(message)` is what the judge does about a hang: by default log the message
        and end the process (tests pass their own)."""
        if not hang_timeout_s > 0:
            raise ValueError(f"hang timeout must be > 0 seconds, got {hang_timeout_s} "
                             "(MODEL.DIST_HANG_TIMEOUT)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        self.store, self.rank, self.world_size = store, rank, world_size
        self.hang_timeout_s = float(hang_timeout_s)
        # Several beats per bound, so that one late beat is no alarm; a few seconds at most,
        # which keeps the store's load small for the default bound of minutes.
        self.interval_s = interval_s if interval_s is not None else min(5.0, hang_timeout_s / 10)
        self.prefix = prefix
        self.on_hang = on_hang if on_hang is not None else end_process
        self.others = [r for r in range(world_size) if r != rank]
        self._lock = threading.Lock()
        start = time.monotonic()
        self._last_poll = start           # end of the last poll that the store answered
        self._last_change = dict.fromkeys(self.others, start)
        self._last_count: Dict[int, Optional[int]] = dict.fromkeys(self.others, None)
        self._store_error: Optional[BaseException] = None
        self._waiting = False             # in wait_for_all, which reports a hang itself
        self._barriers: Dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []

    # ---------------------------------------------------------------------- lifecycle
    def start(self) -> "RankWatchdog":
        if self._threads:
            raise RuntimeError("the watchdog is already running")
        self._stop.clear()
        self._poll()  # our first beat; the others' counters from now on
        self._threads = [threading.Thread(target=loop, name=f"transreid-{name}", daemon=True)
                         for name, loop in (("pulse", self._pulse_loop),
                                            ("watchdog", self._judge_loop))]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and watching (a pulse blocked on a dead store is left to die with
        the process: it is a daemon)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * self.interval_s + 1)
        self._threads = []

    def __enter__(self) -> "RankWatchdog":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------- heartbeats
    def _key(self, rank: int) -> str:
        return f"{self.prefix}/heartbeat/{rank}"

    def _poll(self) -> None:
        """Beat once and read the others' counters (`add(key, 0)` reads without blocking on
        a key that does not exist yet, unlike `get`)."""
        self.store.add(self._key(self.rank), 1)
        counts = {r: self.store.add(self._key(r), 0) for r in self.others}
        now = time.monotonic()
        with self._lock:
            for r, count in counts.items():
                if count != self._last_count[r]:
                    self._last_count[r], self._last_change[r] = count, now
            self._last_poll, self._store_error = now, None

    def _pulse_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._poll()
            except Exception as err:  # the store is gone or failing: the judge decides
                with self._lock:
                    self._store_error = err

    def stale_ranks(self) -> Dict[int, float]:
        """Other ranks whose heartbeat has not moved for more than the bound -> for how long
        (as of this rank's last answered poll, so a pause of this process accuses no one)."""
        with self._lock:
            ages = {r: self._last_poll - changed for r, changed in self._last_change.items()}
        return {r: age for r, age in ages.items() if age > self.hang_timeout_s}

    def store_silence_s(self) -> float:
        """Seconds since the store last answered this rank's poll."""
        with self._lock:
            return time.monotonic() - self._last_poll

    # ------------------------------------------------------------------------ judge
    def diagnose(self, grace_s: float = 0.0) -> Optional[str]:
        """What is hanging (a message naming it), or None."""
        silence = self.store_silence_s()
        if silence > self.hang_timeout_s + grace_s:
            with self._lock:
                error = self._store_error
            cause = f" (last error: {error})" if error is not None else ""
            return (f"rank {self.rank}: the c10d store has not answered for {silence:.0f} s "
                    f"(bound {self.hang_timeout_s:g} s){cause}; the process hosting it (rank 0, "
                    "or torchrun's agent) is stuck or gone")
        stale = {r: age for r, age in self.stale_ranks().items()
                 if age > self.hang_timeout_s + grace_s}
        if stale:
            return (f"rank {self.rank}: {self._describe(stale)} (bound "
                    f"{self.hang_timeout_s:g} s, MODEL.DIST_HANG_TIMEOUT); that process is "
                    "stopped, frozen or dead, and this one would wait for it in the next "
                    "collective until the process group's timeout")
        return None

    def _describe(self, stale: Dict[int, float]) -> str:
        ranks = ", ".join(f"rank {r} for {age:.1f} s" for r, age in sorted(stale.items()))
        return f"no heartbeat from {ranks}"

    def _judge_loop(self) -> None:
        last_tick = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            paused = now - last_tick > self.hang_timeout_s / 2
            last_tick = now
            if paused:
                continue  # this process itself was paused: measure again before judging
            # wait_for_all reports a hang as an exception: give it the first word.
            problem = self.diagnose(grace_s=3 * self.interval_s if self._waiting else 0.0)
            if problem is not None and not self._stop.is_set():
                self.on_hang(problem)
                return

    # ---------------------------------------------------------------------- barrier
    def wait_for_all(self, name: str, timeout_s: Optional[float] = None) -> None:
        """A barrier through the store, for as long as the ranks not yet there are alive (or
        at most `timeout_s`): raises DistributedHangError naming the ranks that stopped beating
        before arriving. Every rank calls the same barriers in the same order."""
        self._barrier(name, timeout_s, last=False)

    def finish(self, timeout_s: Optional[float] = None) -> None:
        """The run's last barrier, then stop: every rank stops beating before any leaves, so
        that no heartbeat is in flight when the process hosting the store exits."""
        try:
            self._barrier("finish", timeout_s, last=True)
        finally:
            self.stop()

    def _barrier(self, name: str, timeout_s: Optional[float], last: bool) -> None:
        if not self._threads:
            raise RuntimeError("wait_for_all needs the watchdog running: call start() first")
        self._barriers[name] += 1
        base = f"{self.prefix}/barrier/{name}/{self._barriers[name]}"
        poll_s = min(self.interval_s, 0.2)
        start = time.monotonic()
        self._waiting = True
        try:
            self.store.set(f"{base}/at/{self.rank}", "1")
            self.store.add(f"{base}/arrived", 1)
            while self._store_add(f"{base}/arrived", name) < self.world_size:
                missing = [r for r in self.others if not self.store.check([f"{base}/at/{r}"])]
                stale = {r: age for r, age in self.stale_ranks().items() if r in missing}
                if stale:
                    raise DistributedHangError(
                        f"rank {self.rank} waiting at '{name}': {self._describe(stale)} (bound "
                        f"{self.hang_timeout_s:g} s, MODEL.DIST_HANG_TIMEOUT); that process "
                        "is stopped, frozen or dead")
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise DistributedHangError(
                        f"rank {self.rank} waited {timeout_s:g} s at '{name}' for rank(s) "
                        f"{', '.join(map(str, missing))}, which are alive but did not arrive")
                time.sleep(poll_s)
            if last:
                self.stop()
                self._wait_for_departures(f"{base}/left")
        finally:
            self._waiting = False

    def _store_add(self, key: str, name: str) -> int:
        try:
            return self.store.add(key, 0)
        except Exception as err:
            raise DistributedHangError(
                f"rank {self.rank} waiting at '{name}': the c10d store failed ({err}); the "
                "process hosting it (rank 0, or torchrun's agent) has ended") from err

    def _wait_for_departures(self, key: str) -> None:
        """Rank 0 stays until every rank has acknowledged the end, and the others do not look
        at the store after acknowledging: when rank 0 hosts the store (init_method=env://),
        no one then finds it gone. Heartbeats are off by now, so a peer that died here is
        waited for one bound at most; failures are harmless (everyone had arrived)."""
        give_up = time.monotonic() + self.hang_timeout_s
        try:
            if self.store.add(key, 1) >= self.world_size or self.rank != 0:
                return
            while self.store.add(key, 0) < self.world_size and time.monotonic() < give_up:
                time.sleep(0.01)
        except Exception as err:
            logger.debug("leaving the last barrier without all acknowledgements: %s", err)


def start_watchdog(hang_timeout_s: float, store: Optional[dist.Store] = None,
                   interval_s: Optional[float] = None) -> RankWatchdog:
    """A started RankWatchdog for this process in the default process group, on its store."""
    if not dist.is_initialized():
        raise RuntimeError("start_watchdog needs torch.distributed initialised "
                           "(init_process_group) first")
    if store is None:
        from torch.distributed.distributed_c10d import _get_default_store
        store = _get_default_store()
    return RankWatchdog(store, dist.get_rank(), dist.get_world_size(), hang_timeout_s,
                        interval_s).start()


def end_process(message: str) -> None:
    """Log `message` and end this process at once: the main thread may be blocked inside a
    collective, which nothing else interrupts."""
    logger.critical("%s. Ending this process (exit status %d).", message, HANG_EXIT_CODE)
    _flush_logs()
    os._exit(HANG_EXIT_CODE)


def _flush_logs() -> None:
    """os._exit skips logging's shutdown: flush what the message went through first."""
    current: Optional[logging.Logger] = logger
    while current is not None:
        for handler in current.handlers:
            try:
                handler.flush()
            except Exception:
                pass
        current = current.parent if current.propagate else None
