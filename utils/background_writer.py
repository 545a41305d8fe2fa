"""Files written in a background thread from CPU copies of live tensors.

`snapshot` copies nested state (dicts, lists, tuples of tensors) off the device, into reused
buffers when it can; `BackgroundWriter` writes queued snapshots atomically in one thread, in
order, so a training loop waits for the copy and never for the disk.
"""
from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, Iterator, List, Optional, Set

import torch

from utils.files import atomic_save


def tensors_in(obj: Any) -> List[torch.Tensor]:
    """The tensors of nested dicts, lists and tuples, in the order `snapshot` visits them."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    values = obj if isinstance(obj, (list, tuple)) else ()
    return [tensor for value in values for tensor in tensors_in(value)]


def layout(tensors: List[torch.Tensor]) -> tuple:
    """What decides whether the copies of one snapshot can take another's buffers."""
    return tuple((tuple(t.shape), t.dtype, t.is_cuda) for t in tensors)


def snapshot(obj: Any, cuda_devices: Set[torch.device],
             buffers: Optional[Iterator[torch.Tensor]] = None) -> Any:
    """A copy of `obj` (nested dicts, lists and tuples of tensors and plain values) whose
    tensors are on the CPU and no longer shared with training, which goes on changing the
    originals in place. `buffers` (CPU tensors of the same `layout`, in `tensors_in` order)
    receive the copies when given: copying into memory already mapped is several times faster
    than into new allocations, which fault in every page. CUDA tensors are copied
    asynchronously (into pinned memory) on the current stream: their devices are added to
    `cuda_devices`, whose streams must be synced before the copies are read."""
    if isinstance(obj, torch.Tensor):
        source = obj.detach()
        if obj.is_cuda:
            cuda_devices.add(obj.device)
        if buffers is not None:
            return next(buffers).copy_(source, non_blocking=obj.is_cuda)
        return source.to("cpu", non_blocking=True) if obj.is_cuda else source.clone()
    if isinstance(obj, dict):
        return type(obj)((key, snapshot(value, cuda_devices, buffers))
                         for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(value, cuda_devices, buffers) for value in obj)
    return obj  # numbers, strings, None: immutable


def copies_done(cuda_devices: Set[torch.device]) -> List["torch.cuda.Event"]:
    """Events that complete when the copies `snapshot` queued on these devices are done."""
    events = []
    for device in cuda_devices:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        events.append(event)
    return events


class Write:
    """One queued file: the object to save, where, the line to log once it is there, and the
    key under which its tensors go back to the buffer pool after the write."""

    def __init__(self, obj: Any, path: str, done_message: str, events: List[Any],
                 buffer_key: tuple) -> None:
        self.obj, self.path, self.done_message, self.events = obj, path, done_message, events
        self.buffer_key = buffer_key


class BackgroundWriter:
    """Writes files atomically in one thread, in the order they are queued.

    After a failed write, the writes queued behind it are dropped: the order of the files is
    part of their meaning (the model of an epoch before the state that says it was written,
    the state that records a new best mAP before the best weights), so a later file must not
    land without an earlier one. The failure is kept for `check` to raise in the caller's
    thread. Writes still queued when the interpreter exits are finished first (the executor's
    thread is joined at exit), so a stop between two epochs never loses the last one.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Deque[Future] = collections.deque()
        self._lock = threading.Lock()
        self._failure: Optional[tuple] = None  # (path, exception) of the first failed write
        # One set of snapshot buffers per layout, free once its file is written: the next
        # snapshot of that layout (the next epoch's state) copies into it.
        self._free_buffers: Dict[tuple, List[torch.Tensor]] = {}

    def take_buffers(self, key: tuple) -> Optional[List[torch.Tensor]]:
        with self._lock:
            return self._free_buffers.pop(key, None)

    def submit(self, write: Write) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="checkpoint-writer")
        self._pending.append(self._executor.submit(self._run, write))

    def _run(self, write: Write) -> None:
        with self._lock:
            if self._failure is not None:
                return
        try:
            for event in write.events:
                event.synchronize()  # the device-to-host copies of `snapshot`
            atomic_save(write.obj, write.path)
        except BaseException as err:  # kept for the training thread, which stops on it
            with self._lock:
                self._failure = (write.path, err)
            return
        with self._lock:
            self._free_buffers[write.buffer_key] = tensors_in(write.obj)
        self.logger.info(write.done_message)

    @property
    def num_pending(self) -> int:
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        return len(self._pending)

    def wait(self, max_pending: int = 0) -> None:
        """Wait until at most `max_pending` writes are queued or running."""
        while self.num_pending > max_pending:
            self._pending[0].result()

    def failure(self) -> Optional[tuple]:
        with self._lock:
            return self._failure

    def shutdown(self) -> None:
        """Wait for every queued write and stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pending.clear()


