"""SHA-256 of files as they are written and read back, at little more than the cost of the I/O.

A writer hashes the bytes it writes (`HashingWriter`); a reader hashes the bytes it reads
(`HashingReader` for a stream, `BackgroundDigest` for a memory-mapped array copied block by
block, on a worker thread while the caller copies: hashlib releases the GIL). A file verified
once is not hashed again in this process while its (size, mtime, inode) are unchanged, as
`utils.files.verify_zip` does for checkpoints.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Dict, List, Optional, Tuple

from utils.files import file_identity

# Files whose SHA-256 was checked in this process: realpath -> ((size, mtime_ns, inode), digest).
_VERIFIED: Dict[str, Tuple[Tuple[int, int, int], str]] = {}


def known_good(path: str, digest: str) -> bool:
    """Whether `path` was found to have `digest` in this process and has not changed since."""
    try:
        return _VERIFIED.get(os.path.realpath(path)) == (file_identity(path), digest)
    except OSError:
        return False


def needs_check(path: str, expected: Optional[str]) -> bool:
    """Whether `path` must be hashed: it has a recorded digest not yet verified here."""
    return expected is not None and not known_good(path, expected)


def remember_good(path: str, digest: str) -> None:
    """Record that `path`, as it is now, has `digest` (call it only after checking)."""
    _VERIFIED[os.path.realpath(path)] = (file_identity(path), digest)


class HashingWriter:
    """A write-only file object that hashes what is written through it to `handle`."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.hasher = hashlib.sha256()

    def write(self, data) -> int:
        self.hasher.update(data)
        return self.handle.write(data)

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


class HashingReader(io.RawIOBase):
    """A raw binary stream over `handle` that hashes what is read through it (wrap it in
    io.BufferedReader / io.TextIOWrapper); read to the end before asking `hexdigest`."""

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__()
        self.handle = handle
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.handle.readinto(buffer)
        if count:
            self.hasher.update(memoryview(buffer)[:count])
        return count

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


class BackgroundDigest:
    """SHA-256 of bytes fed in order (`update`), computed on one worker thread while the caller
    goes on; `hexdigest` waits for it. The blocks must stay unchanged until then."""

    def __init__(self, first: bytes = b"") -> None:
        self.hasher = hashlib.sha256(first)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        self._pending: List[Future] = []

    def update(self, block) -> None:
        self._pending.append(self._worker.submit(self.hasher.update, block))

    def hexdigest(self) -> str:
        try:
            for pending in self._pending:
                pending.result()  # in order: one worker takes them as they were queued
        finally:
            self.close()
        return self.hasher.hexdigest()

    def close(self) -> None:
        """Stop, dropping what is still queued (a reader that gave up early)."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._pending = []
