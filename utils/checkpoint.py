"""Files written atomically, and training checkpoints with everything needed to resume exactly.

Checkpoints are written off the training loop's critical path: `Checkpointer` copies the state
off the device and a background thread writes it, one file at a time in the order asked for.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import random
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterator, List, Optional, Set, Union

import numpy as np
import torch
from yacs.config import CfgNode

from utils.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# errno values of a write that found no room: the disk, or the user's quota on it, is full.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or an exception it was raised from or while handling, is an OSError of
    a full disk. torch's writer reports one as RuntimeError('unexpected pos ...'), raised
    while handling the OSError of Python's write."""
    seen: Set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _free_space(folder: str) -> str:
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"


class DiskFullError(UserError, OSError):
    """A file could not be written for lack of space; the previous version of it is intact."""

    def __init__(self, path: str, fix: str = "") -> None:
        self.path = path
        self.fix = fix
        folder = os.path.dirname(os.path.abspath(path))
        super().__init__(
            f"the disk is full: no space left in '{folder}' to write '{os.path.basename(path)}' "
            f"({_free_space(folder)} now); "
            + (fix or "the previous file of that name, if any, is intact: free space there or "
               "write to another folder"))
        self.errno = errno.ENOSPC

    def with_fix(self, fix: str) -> "DiskFullError":
        return DiskFullError(self.path, fix)


def _remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """A temporary path next to `path`, renamed to `path` only if the block succeeds: a crash
    mid-write leaves the previous file intact instead of a truncated one. A full disk raises
    a DiskFullError naming `path` (after the partial file is removed)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp_",
                                        suffix=os.path.splitext(path)[1])
    except OSError as err:
        if is_disk_full(err):  # no room left even for an empty file's inode
            raise DiskFullError(path) from err
        raise
    os.close(fd)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode open() would have.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except Exception as err:
        if not is_disk_full(err):
            raise
        _remove_if_present(tmp_path)  # first, so that the message tells the space there is
        raise DiskFullError(path) from err
    finally:
        _remove_if_present(tmp_path)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through `atomic_output`, synced to disk before the rename."""
    with atomic_output(path) as tmp_path, open(tmp_path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str, text: str) -> None:
    """`text` as the file `path`, through `atomic_output`, synced to disk before the rename."""
    with atomic_output(path) as tmp_path, open(tmp_path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def rng_states(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """This process's random states, as plain tensors and lists so that weights_only loading
    accepts them; the CUDA state is the one of `device` (each process drives one GPU)."""
    np_state = np.random.get_state()
    on_gpu = device is not None and device.type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if on_gpu else None,
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng_states(states: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    torch.set_rng_state(states["torch"])
    if isinstance(states["cuda"], torch.Tensor) and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class ResumeError(UserError, ValueError):
    """A training checkpoint that this run's config cannot continue."""


class ResumeStateNotFoundError(ResumeError, FileNotFoundError):
    """MODEL.RESUME names a file that does not exist."""


LAST_CHECKPOINT = "last_checkpoint.pth"
RESUME_MISSING_HINT = ("MODEL.RESUME must name the 'last_checkpoint.pth' that training writes to "
                       "OUTPUT_DIR")
# Entries of the training state; 'model' and 'epoch' identify one.
STATE_KEYS = ("model", "optimizer", "optimizer_center", "center_criterion", "scaler", "epoch",
              "best_mAP", "rng", "config", "output_dir")
# Keys whose change on resume is expected and not worth reporting.
RESUME_IGNORED_KEYS = ("MODEL.RESUME",)


def load_checkpoint(path: str, mmap: bool = False) -> Dict[str, Any]:
    """The training state in `path` (MODEL.RESUME); a file that is none raises a ResumeError
    naming what it is. `mmap` leaves the tensors on disk: a quick check before a run starts."""
    from model.weights import WeightsNotFoundError, load_file  # model imports utils

    if not os.path.exists(path):
        raise ResumeStateNotFoundError(f"checkpoint '{path}' (MODEL.RESUME) does not exist; it is "
                                       "the 'last_checkpoint.pth' that training writes to OUTPUT_DIR")
    try:
        state = load_file(path, RESUME_MISSING_HINT, mmap)
    except WeightsNotFoundError as err:
        raise ResumeError(f"MODEL.RESUME: {err}") from None
    missing = {"model", "optimizer", "epoch"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise ResumeError(f"'{path}' is not a training checkpoint (no {sorted(missing)}); to start "
                          "from trained weights use MODEL.PRETRAIN_CHOICE 'self' with MODEL.PRETRAIN_PATH")
    return state


def _flat_config(node, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        flat.update(_flat_config(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def config_changes(saved_dump: str, cfg) -> List[str]:
    """'KEY saved -> now' for every key whose value differs from the checkpoint's config."""
    saved = _flat_config(CfgNode.load_cfg(saved_dump))
    now = _flat_config(CfgNode.load_cfg(cfg.dump()))
    return [f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in sorted(saved.keys() | now.keys())
            if key not in RESUME_IGNORED_KEYS and saved.get(key) != now.get(key)]


@dataclass
class TrainingObjects:
    """What the training state saves and restores besides counters."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    optimizer_center: torch.optim.Optimizer
    center_criterion: torch.nn.Module
    scaler: torch.amp.GradScaler


def _check_optimizer_kind(optimizer: torch.optim.Optimizer, saved: Dict[str, Any]) -> None:
    """Another optimizer's state loads without complaint and fails at the first step (SGD
    finds no 'momentum' in AdamW's groups): compare the hyperparameters the groups carry."""
    groups = saved.get("param_groups") or [{}]
    # Only keys that tell the kinds apart: a newer torch adds other defaults over time.
    missing = sorted({"momentum", "betas"} & set(optimizer.defaults) - set(groups[0]))
    if missing:
        raise ValueError(f"it holds the state of another optimizer than this run's "
                         f"{type(optimizer).__name__} (its groups lack {missing}): "
                         "SOLVER.OPTIMIZER_NAME changed")


class CheckpointWriteError(UserError, OSError):
    """A checkpoint file could not be written (not for lack of space: see DiskFullError)."""


def saved_epoch(path: str) -> Optional[int]:
    """The epoch of the training state in `path`; None when there is no readable one."""
    try:
        # mmap: the tensors stay on disk, only the small index is read.
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["epoch"])
    except Exception:  # missing, foreign or unreadable: there is nothing to resume from
        return None


def resume_hint(output_dir: str) -> str:
    """How to continue a run of `output_dir` that stopped: the MODEL.RESUME of its last state."""
    path = os.path.join(output_dir, LAST_CHECKPOINT)
    epoch = saved_epoch(path)
    if epoch is None:
        return "No epoch had been saved, so there is nothing to resume: start the run again."
    return f"Continue from the last saved epoch ({epoch}) with MODEL.RESUME {path}"


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


class _Write:
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

    def submit(self, write: _Write) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="checkpoint-writer")
        self._pending.append(self._executor.submit(self._run, write))

    def _run(self, write: _Write) -> None:
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


# A checkpoint epoch queues its model file and the resume state back to back; a third
# snapshot waits for the oldest write, so host memory holds at most two copies in flight.
MAX_PENDING_WRITES = 2


class Checkpointer:
    """The files of a training run in OUTPUT_DIR, and the one owner of their formats.

    * `<MODEL.NAME>_<epoch>.pth` and `<MODEL.NAME>_best.pth`: the model's state dict alone, in
      the reference's format (what test.py, the tools and MODEL.PRETRAIN_PATH read);
    * `last_checkpoint.pth`: everything needed to resume exactly (`STATE_KEYS`).

    `save_weights` and `save_state` return once the state is copied off the device; a
    background thread writes the files in the order asked for, each atomically (a crash
    mid-write leaves the previous one). A failed write is raised, as a UserError saying what to
    resume from, by the next `save_*` or `check()`; `close()` (or leaving `with checkpointer:`)
    waits for the last write and raises its failure too.
    """

    def __init__(self, cfg, objects: TrainingObjects) -> None:
        self.cfg = cfg
        self.objects = objects
        self.logger = logging.getLogger("transreid.train")
        self.writer = BackgroundWriter(self.logger)
        self._failure_raised = False

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, name)

    @property
    def last_path(self) -> str:
        return self.path(LAST_CHECKPOINT)

    def save_weights(self, tag: Union[int, str]) -> str:
        """Queue the model alone as `<MODEL.NAME>_<tag>.pth` (an epoch or 'best')."""
        path = self.path(f"{self.cfg.MODEL.NAME}_{tag}.pth")
        self._queue(lambda: unwrap(self.objects.model).state_dict(), path,
                    f"Saved the model weights to {path}")
        return path

    def save_state(self, epoch: int, best_mAP: float, rng: List[dict]) -> None:
        """Queue everything needed to resume after `epoch`; `rng` holds each rank's random
        states."""
        self._queue(lambda: self.training_state(epoch, best_mAP, rng), self.last_path,
                    f"Saved the training state of epoch {epoch} to {self.last_path}")

    def training_state(self, epoch: int, best_mAP: float, rng: List[dict]) -> Dict[str, Any]:
        """The resume state (`STATE_KEYS`); its tensors are the live ones, not copies."""
        o = self.objects
        return {
            "model": unwrap(o.model).state_dict(),
            "optimizer": o.optimizer.state_dict(),
            "optimizer_center": o.optimizer_center.state_dict(),
            "center_criterion": o.center_criterion.state_dict(),
            "scaler": o.scaler.state_dict(),
            "epoch": epoch,
            "best_mAP": best_mAP,
            "rng": rng,
            "config": self.cfg.dump(),
            # Where this run writes: resuming elsewhere is refused if that folder holds
            # another run's state (see processor.check_output_dir_is_free).
            "output_dir": os.path.realpath(self.cfg.OUTPUT_DIR),
        }

    def _queue(self, make_state, path: str, done_message: str) -> None:
        self.check()
        self.writer.wait(max_pending=MAX_PENDING_WRITES - 1)
        self.check()
        live = make_state()
        key = layout(tensors_in(live))
        buffers = self.writer.take_buffers(key)
        cuda_devices: Set[torch.device] = set()
        state = snapshot(live, cuda_devices, iter(buffers) if buffers is not None else None)
        self.writer.submit(_Write(state, path, done_message, copies_done(cuda_devices), key))

    def check(self) -> None:
        """Raise the failure of an earlier write, if one failed: as a UserError naming the
        file and what to resume from when the fault is the file system's."""
        failure = self.writer.failure()
        if failure is None:
            return
        path, err = failure
        self._failure_raised = True
        hint = resume_hint(self.cfg.OUTPUT_DIR)
        if isinstance(err, DiskFullError):
            raise err.with_fix("training stopped. Free space there (or copy OUTPUT_DIR to a disk "
                               f"with room and resume the copy). {hint}") from err
        if isinstance(err, OSError):
            raise CheckpointWriteError(f"writing '{path}' failed ({err}); training stopped. "
                                       f"{hint}") from err
        raise err  # not the file system's fault: a bug, with its traceback

    def close(self) -> None:
        """Wait for the queued writes; raise the failure of any."""
        self.writer.shutdown()
        self.check()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing (or interrupted): let the queued writes land, each atomically, and
        # report a failed one without hiding the exception on its way.
        self.writer.shutdown()
        failure = self.writer.failure()
        if failure is not None and not self._failure_raised:
            self.logger.error("writing '%s' failed as well: %s", *failure)

    def restore(self, path: str) -> Dict[str, Any]:
        """Load the state of `path` into the training objects; returns the state (its epoch,
        best_mAP and rng are the caller's). The learning rate follows this run's config (the
        schedule is a function of the epoch), so SOLVER.MAX_EPOCHS can be raised."""
        state = load_checkpoint(path)
        changes = config_changes(state["config"], self.cfg) if "config" in state else []
        if changes:
            self.logger.warning("Resuming %s with settings that differ from its run's: %s", path,
                                "; ".join(changes))
        try:
            self._load(state)
        except (RuntimeError, KeyError, ValueError) as err:
            raise ResumeError(
                f"{path} does not fit this run's model or optimizer ({err}); settings changed "
                f"since it was written: {'; '.join(changes) or 'none recorded'}. Resume with the "
                "config it was written with (config.yaml beside it)") from err
        return state

    def _load(self, state: Dict[str, Any]) -> None:
        o = self.objects
        unwrap(o.model).load_state_dict(state["model"])
        _check_optimizer_kind(o.optimizer, state["optimizer"])
        o.optimizer.load_state_dict(state["optimizer"])
        o.optimizer_center.load_state_dict(state["optimizer_center"])
        o.center_criterion.load_state_dict(state["center_criterion"])
        o.scaler.load_state_dict(state["scaler"])
