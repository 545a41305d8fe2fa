"""Every command of README.md and docs/*.md that runs on the quickstart model, as written, twice
in a row: both runs must succeed (or the second refuse a named output in one line), and nothing
the first wrote may be lost.

    python benchmarks/docs_commands.py --run logs/synthetic_vit_transreid_tiny

`--run` is the quickstart's run folder (train it first, README's one command). The commands run
in bash in a scratch folder laid out like the repository: its code and configs linked, the
synthetic data linked, the run folder copied. `$CFG`, `$W` and `$DATA` are set to the
quickstart's config, weights and data as docs/gallery.md sets them; the docs' example crops are
a few of its query images. Commands that need a real dataset,
a GPU or another machine are listed as skipped, with why.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = "configs/Synthetic/vit_transreid_tiny.yml"
RUN = "logs/synthetic_vit_transreid_tiny"
DATA = "data/synthetic_market1501"
# The docs' shell variables, set as they say (docs/gallery.md), for the shell to expand.
VARIABLES = {"CFG": QUICKSTART, "W": f"{RUN}/transformer_40.pth", "DATA": DATA}
# The docs' example paths, as regular expressions, and what stands for them on the quickstart.
SUBSTITUTIONS = ((r"--images crops/(?=\s|$)", f"--images {DATA}/bounding_box_test"),
                 (r"--gallery crops/(?=\s|$)", f"--gallery {DATA}/bounding_box_test"),
                 (r"--images more/", "--images crops/alice/"), (r"new_crops/", f"{DATA}/query"),
                 (r"\bq\.jpg\b", "person.jpg"))
# Why a documented command is not run here (the first pattern found in it decides).
SKIPPED = (("pip install", "installs packages"),
           ("train.py", "training: the quickstart's run is the setup"),
           ("dist_train.sh", "needs GPUs"),
           ("benchmarks/", "a benchmark: minutes of measurements, not a user's command"),
           ("configs/Market", "needs Market-1501"), ("configs/VehicleID", "needs VehicleID"),
           ("/path/to/", "a placeholder for the user's data"),
           ("logs/market", "a Market-1501 run"))
REFUSAL = re.compile(r"error: .*(exists; pass --overwrite|already a gallery|is already in "
                     r"gallery|no entry labelled)")


def documented_commands() -> List[Tuple[str, str]]:
    """(file, command) of every `python ...` line in the bash blocks of README and docs/."""
    found = []
    for path in ["README.md", *sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))]:
        text = open(os.path.join(REPO_ROOT, path)).read()
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if re.search(r"(^|&& )python ", command):
                    found.append((os.path.relpath(path, REPO_ROOT), re.sub(" +", " ", command)))
    return found


def skip_reason(command: str) -> Optional[str]:
    return next((why for pattern, why in SKIPPED if pattern in command), None)


def scratch_folder(run: str, data: str) -> str:
    """A folder laid out like the repository, for the commands' relative paths."""
    work = tempfile.mkdtemp(prefix="docs_commands_")
    for name in os.listdir(REPO_ROOT):
        if name not in ("logs", "data", ".git") and not name.startswith("."):
            os.symlink(os.path.join(REPO_ROOT, name), os.path.join(work, name))
    os.makedirs(os.path.join(work, "data"))
    os.symlink(os.path.abspath(data), os.path.join(work, DATA))
    shutil.copytree(run, os.path.join(work, RUN))
    query = sorted(glob.glob(os.path.join(data, "query", "*.jpg")))
    os.makedirs(os.path.join(work, "crops", "alice"))
    for path in [p for p in query if os.path.basename(p).startswith(
            os.path.basename(query[0])[:4])][:3]:
        shutil.copy(path, os.path.join(work, "crops", "alice"))
    shutil.copy(query[0], os.path.join(work, "person.jpg"))
    return work


def snapshot(work: str) -> Dict[str, bytes]:
    """Each file the commands wrote (links into the repository left out), by its SHA-256."""
    found = {}
    for folder, dirs, names in os.walk(work):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                found[os.path.relpath(path, work)] = open(path, "rb").read()
    return found


def lost(before: Dict[str, bytes], after: Dict[str, bytes]) -> List[str]:
    """Files of `before` gone or changed in `after`; a log may only grow."""
    return [name for name, content in before.items()
            if name not in after or (after[name] != content and not (
                name.endswith(".txt") and after[name].startswith(content)))]


def run_twice(work: str, command: str) -> Tuple[int, int, str, List[str]]:
    """(first exit status, second's, the second's last stderr line, files lost)."""
    for pattern, value in SUBSTITUTIONS:
        command = re.sub(pattern, value, command)
    env = {**os.environ, **VARIABLES}
    first = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True,
                           executable="/bin/bash")
    before = snapshot(work)
    second = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True,
                            text=True, executable="/bin/bash")
    tail = (second.stderr.strip().splitlines() or [""])[-1]
    if first.returncode:
        tail = (first.stderr.strip().splitlines() or [""])[-1]
    return first.returncode, second.returncode, tail, lost(before, snapshot(work))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=RUN, help=f"the quickstart's run folder ({RUN})")
    parser.add_argument("--data", default=DATA, help=f"its synthetic data ({DATA})")
    parser.add_argument("--only", nargs="*", default=None, metavar="FILE",
                        help="only these documents (e.g. docs/gallery.md)")
    args = parser.parse_args()
    failures, folders = 0, {}
    for source, command in documented_commands():
        if args.only and source not in args.only:
            continue
        # One scratch folder per document: its commands build on each other, not on another's.
        if source not in folders:
            folders[source] = scratch_folder(args.run, args.data)
        work = folders[source]
        why = skip_reason(command)
        if why:
            print(f"skipped   {source}: {command[:90]}  ({why})")
            continue
        first, second, tail, gone = run_twice(work, command)
        refused = second and REFUSAL.search(tail) is not None
        ok = first == 0 and (second == 0 or refused) and not gone
        failures += not ok
        verdict = "ok" if ok and not refused else "refused" if ok else "FAILED"
        print(f"{verdict:9s} {source}: {command[:90]}"
              + (f"\n          second run: {tail}" if refused or not ok else "")
              + (f"\n          lost: {gone}" if gone else ""), flush=True)
    for work in folders.values():
        shutil.rmtree(work)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
