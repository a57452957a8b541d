"""Where matplotlib keeps its configuration and cache, set before anything imports it.

Only environment variables: importing matplotlib costs over a second, and the command line
must not pay it before it knows it will draw (the report imports it when it draws).
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def configure_matplotlib_env() -> None:
    """Agg backend and a writable config/cache folder that is never under ``~`` (a read-only
    HOME, as in containers run as another user, must work)."""
    cfg = os.environ.get("MPLCONFIGDIR")
    if not cfg or not writable_dir(Path(cfg)):
        base = Path(tempfile.gettempdir()) / f"nmbids-mpl-{os.getuid()}"
        try:
            base.mkdir(mode=0o700, exist_ok=True)
            st = base.lstat()
            ok = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and writable_dir(base)
        except OSError:
            ok = False
        os.environ["MPLCONFIGDIR"] = str(base) if ok else tempfile.mkdtemp(prefix="nmbids-mpl-")
    os.environ.setdefault("MPLBACKEND", "Agg")


def writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)
