"""What every validation driver does alike: run ``nmbids participant`` on a simulated
cohort, and stamp the results with the code and the time that made them."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_participant_level(d: Path, nprocs: int, quality: str = "fast", extra: tuple = ()) -> int:
    """Run ``nmbids d/bids d/out participant`` (work dir ``d/work``, log ``d/nmbids.log``),
    with the options ``extra`` besides.

    Returns its exit code. The code is kept in ``d/nmbids.rc``, and a cohort whose last run
    exited 0 is not run again, so an interrupted validation resumes where it stopped.
    """
    done = d / "nmbids.rc"
    if done.exists() and done.read_text().strip() == "0":
        return 0
    exe = Path(sys.executable).with_name("nmbids")
    cmd = [str(exe), str(d / "bids"), str(d / "out"), "participant", "-w", str(d / "work"),
           "--registration-quality", quality, "--nprocs", str(nprocs), "--skip-bids-validation", *extra]
    with open(d / "nmbids.log", "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    done.write_text(f"{rc}\n")
    return rc


def code_version() -> str:
    """The checkout's short commit, marked when ``nmbids/`` has uncommitted changes."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "nmbids"],
                           capture_output=True, text=True).stdout.strip()
    return commit + (" (nmbids/ modified)" if dirty else "")


def stamp(started: float) -> dict:
    """``date``, ``elapsed_min`` since ``started`` (a ``time.time()``) and ``commit``."""
    return dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                elapsed_min=round((time.time() - started) / 60, 1), commit=code_version())
