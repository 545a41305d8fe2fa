"""Files written whole or not at all, and one clear error for a full disk.

Every file the project writes goes through `atomic_output`: a temporary file beside the target,
renamed over it only once complete, so a crash, a kill or a full disk mid-write leaves the
previous version intact instead of a truncated one.

Files read back are checked before use where their format allows: `verify_zip` checks the CRC-32
of every member of a torch.save archive, and `move_aside` keeps a damaged file under a free name
instead of deleting or overwriting it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from typing import (Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Set, Tuple)

from utils.errors import UserError

logger = logging.getLogger("transreid.files")

# Temporary files of `atomic_output`: mkstemp(prefix=TEMP_PREFIX, suffix=<target's extension>),
# whose random part is 8 characters of [a-z0-9_]. Matching exactly that keeps user files safe.
TEMP_PREFIX = ".tmp_"
_TEMP_FILE = re.compile(re.escape(TEMP_PREFIX) + r"[a-z0-9_]{8}(\.[A-Za-z0-9]+)?")


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
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX,
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


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> int:
    """`write(handle)` as the file `path`, through `atomic_output`, synced to disk before the
    rename (a crash after it cannot leave an empty file under the new name); returns the size."""
    with atomic_output(path) as tmp_path:
        with open(tmp_path, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        return os.path.getsize(tmp_path)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through `atomic_write`."""
    import torch  # here: the rest of this module serves tools that answer before torch loads
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str, text: str) -> None:
    """`text` (UTF-8) as the file `path`, through `atomic_write`."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def fsync_path(path: str) -> None:
    """Sync a file that a library wrote by name (not through a handle) to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def remove_stale_temp_files(folder: str) -> List[str]:
    """Remove the temporary files that a write killed midway left in `folder` (not its
    subfolders); returns their paths. Call it only while holding the folder's lock, which
    guarantees that no live writer of this folder owns them."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        if not _TEMP_FILE.fullmatch(name) or os.path.islink(path) or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
            logger.info("removed '%s' (%.1f MB), left by an interrupted write", path, size / 1e6)
    return removed


# ---------------------------------------------------------------------------- the output rule
class UnsafeOutputError(UserError, ValueError):
    """An output path that would replace an input, a file of another kind or an earlier result
    without --overwrite, or that cannot be written; checked before the work starts."""


def _same_path(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # hard links and symlinks included
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable_location(path: str, option: str = "--output") -> None:
    """Fail now, not after the work, when no file can be created where `path` goes: its first
    existing ancestor must be a folder in which a file can be made (a read-only file system,
    missing permission or a file in the way are named). Creates nothing that stays."""
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UnsafeOutputError(f"cannot write '{path}': '{existing}' is a file, not a folder; "
                                f"choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=TEMP_PREFIX):
            pass
    except OSError as err:
        raise UnsafeOutputError(f"cannot write '{path}': creating a file in '{existing}' failed "
                                f"({err.strerror}); choose another {option}") from None


def check_output(path: str, suffix: str, inputs: Iterable[str] = (), overwrite: bool = False,
                 option: str = "--output") -> str:
    """The one rule for a file the project is about to write, checked before the work starts.

    `path` must end in `suffix` (the kind of file written: a PNG is never written over a
    `.pth`), must not be any of `inputs` (however the paths are spelt), must not be a folder,
    replaces an existing file only with `overwrite`, and must be creatable. Returns `path`.
    Writers then go through `atomic_output`, so a crash leaves the previous file whole.
    """
    for source in inputs:
        if source and _same_path(path, source):
            raise UnsafeOutputError(f"{option} '{path}' is an input of this command ('{source}'); "
                                    "writing it would replace that input: choose another name")
    if not path.lower().endswith(suffix.lower()):
        raise UnsafeOutputError(f"{option} '{path}' does not end in {suffix}, the kind of file "
                                f"written here; give a name ending in {suffix}")
    if os.path.isdir(path):
        raise UnsafeOutputError(f"{option} '{path}' is a folder; give a file name ending in {suffix}")
    if os.path.lexists(path) and not overwrite:
        raise UnsafeOutputError(f"{option} '{path}' exists; pass --overwrite to replace it, or "
                                "choose another name")
    check_writable_location(path, option)
    return path


def check_output_folder(folder: str, names: Iterable[str], inputs: Iterable[str] = (),
                        overwrite: bool = False, option: str = "--output-dir") -> str:
    """`check_output` for each file `names` will put in `folder`, which must not be a file."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UnsafeOutputError(f"{option} '{folder}' is a file, not a folder; choose a folder")
    for name in names:
        check_output(os.path.join(folder, name), os.path.splitext(name)[1], inputs, overwrite,
                     option)
    return folder


def fresh_names(paths: Sequence[str]) -> List[str]:
    """The default outputs `paths` of one run of a tool, or where any of them exists, the first
    `<stem>-<n><suffix>` of each (n = 2, 3, ...) of which none does: a second run neither fails
    nor replaces the first's results. (A name the user gave is `check_output`'s, which asks for
    --overwrite instead.)"""
    for n in itertools.count(1):
        names = list(paths) if n == 1 else [
            f"{os.path.splitext(p)[0]}-{n}{os.path.splitext(p)[1]}" for p in paths]
        if not any(os.path.lexists(name) for name in names):
            if n > 1:
                logger.info("%s exists: writing %s instead", paths[0], names[0])
            return names
    raise AssertionError("itertools.count never ends")


def fresh_folder(folder: str) -> str:
    """A tool's default output folder, or `<folder>-<n>` where it exists and is not empty."""
    for n in itertools.count(1):
        name = folder if n == 1 else f"{folder}-{n}"
        if not os.path.lexists(name) or (os.path.isdir(name) and not os.listdir(name)):
            if n > 1:
                logger.info("%s holds earlier results: writing to %s", folder, name)
            return name
    raise AssertionError("itertools.count never ends")


# Files verify_zip found whole in this process, by path, with the (size, mtime, inode) they had:
# a resume reads its checkpoint three times (two early checks and the load); one CRC pass does.
_VERIFIED: Dict[str, Tuple[int, int, int]] = {}


def file_identity(path: str) -> Tuple[int, int, int]:
    """(size, mtime_ns, inode): a file unchanged since it was checked keeps all three."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ino


def file_sha256(path: str, block: int = 1 << 24) -> str:
    """The SHA-256 of a whole file, read in blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def verify_zip(path: str) -> Optional[str]:
    """What is wrong with the ZIP archive `path` (a torch.save file), in words, or None when
    every member's data matches the CRC-32 stored with it. torch.load checks none of them, so
    a flipped bit inside a tensor would otherwise load silently. Reads the whole file (about
    0.5 s for a 400 MB ViT-B state dict), once per process while the file is unchanged."""
    identity = file_identity(path)
    if _VERIFIED.get(path) == identity:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # the first member whose CRC-32 or header is wrong
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        return f"its ZIP archive is damaged ({err})"
    if damaged is not None:
        return f"its member '{damaged}' does not match the CRC-32 stored with it"
    _VERIFIED[path] = identity
    return None


def move_aside(path: str, label: str = "damaged") -> str:
    """Rename `path` to `<path>.<label>-<n>` with the smallest n >= 1 that names no file, and
    return that name: a file kept for its owner to look at, never replacing another (a hard
    link claims the new name atomically; file systems without links get a checked rename)."""
    for n in itertools.count(1):
        aside = f"{path}.{label}-{n}"
        try:
            os.link(path, aside)
        except FileExistsError:
            continue
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            if os.path.lexists(aside):
                continue
            os.rename(path, aside)
        else:
            os.remove(path)
        return aside
    raise AssertionError("itertools.count never ends")
