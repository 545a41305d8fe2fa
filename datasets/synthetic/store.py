"""Render a dataset once, atomically, and keep it while its manifest matches the settings."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional

from utils.file_lock import FileLock, describe_holder

logger = logging.getLogger("transreid.datasets")

MANIFEST = "manifest.json"

RENDER_LOCK_SUFFIX = ".render-lock"
"""`.<dataset folder><suffix>`, next to the dataset: held while rendering it."""


def read_manifest(folder: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_rendered(target: str, manifest: Dict[str, Any], render: Callable[[str], None],
                    what: str = "") -> str:
    """Return `target`, rendering it with `render(folder)` unless its manifest equals `manifest`;
    `what` names the rendered set in the one log line that says a render starts.

    Rendering goes to a temporary sibling folder that is renamed into place only when complete,
    so an interrupted run never leaves a half dataset behind; a stale dataset is replaced.
    Processes sharing the data folder render one at a time under a lock next to `target`: a
    second one waits, then finds the dataset ready. Whoever holds that lock also removes the
    temporary folders of renders that were killed, since no live render can own them then.
    """
    if read_manifest(target) == manifest:
        return target
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    with _render_lock(target):
        current = read_manifest(target)
        if current == manifest:  # rendered by the process we waited for
            return target
        remove_abandoned_renders(target)
        missing = current is None and not os.path.exists(target)
        reason = "not there yet" if missing else "settings changed"
        logger.info("rendering %s into %s (%s)", what or manifest.get("generator"), target, reason)
        _render_into_place(target, manifest, render)
    return target


def remove_abandoned_renders(target: str) -> List[str]:
    """Remove the temporary folders that killed renders of `target` left next to it; returns
    them. Only safe while holding `target`'s render lock (see `ensure_rendered`)."""
    parent, prefix = os.path.split(os.path.abspath(target))
    prefix = f".{prefix}."
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if name.startswith(prefix) and os.path.isdir(path) and not os.path.islink(path):
            logger.info("removing '%s', left by an interrupted render", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def _render_lock(target: str) -> Iterator[None]:
    parent, name = os.path.split(os.path.abspath(target))
    lock = FileLock(os.path.join(parent, f".{name}{RENDER_LOCK_SUFFIX}"))

    def report(holder: Dict[str, Any]) -> None:
        logger.info("waiting for %s, which is rendering '%s'", describe_holder(holder), target)
    lock.acquire(on_wait=report)
    try:
        yield
    finally:
        lock.release()


def _render_into_place(target: str, manifest: Dict[str, Any],
                       render: Callable[[str], None]) -> None:
    parent, name = os.path.split(os.path.abspath(target))
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    try:
        render(tmp)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        if os.path.exists(target):
            # Out of the way first, so that the dataset is missing only between two renames;
            # a kill before the removal leaves a hidden folder that the next render removes.
            old = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
            os.rename(target, os.path.join(old, "old"))
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except OSError:
        # A process on a host whose lock we cannot see (an NFS mount without locking) may have
        # put the same dataset in place first; accept it then.
        if read_manifest(target) != manifest:
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
