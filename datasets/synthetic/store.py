"""Render a dataset once, atomically, and keep it while its manifest matches the settings."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Optional

logger = logging.getLogger("transreid.datasets")

MANIFEST = "manifest.json"


def read_manifest(folder: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_rendered(target: str, manifest: Dict[str, Any], render: Callable[[str], None]) -> str:
    """Return `target`, rendering it with `render(folder)` unless its manifest equals `manifest`.

    Rendering goes to a temporary sibling folder that is renamed into place only when complete,
    so an interrupted run never leaves a half dataset behind; a stale dataset is replaced.
    """
    current = read_manifest(target)
    if current == manifest:
        return target
    reason = "not found" if current is None and not os.path.exists(target) else "settings changed"
    logger.info("rendering %s (%s) into %s", manifest.get("generator"), reason, target)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=parent)
    try:
        render(tmp)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError:
        # Another process may have put the same dataset in place first; accept it then.
        if read_manifest(target) != manifest:
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target
