"""Where swarmloop keeps its caches: `$SWARMLOOP_HOME`, default `~/.cache/swarmloop`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def swarmloop_home() -> Path:
    root = os.environ.get("SWARMLOOP_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "swarmloop")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_cache() -> Path:
    path = swarmloop_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def materialize_folder(target: Path, build: "Callable[[Path], None]") -> Path:
    """Create `target` once, atomically, even when several processes race for it.

    `build(tmp)` fills a private temp folder that is then renamed into place; a crash leaves at
    most a stray temp folder, never a half-written target. A file lock makes a second process
    wait for the first instead of building the same thing twice.
    """
    import fcntl
    import shutil
    import tempfile

    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # built by the process we waited for
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
