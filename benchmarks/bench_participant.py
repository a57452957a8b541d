"""Participant-level time for one phantom subject beside one default ANTsPy SyN.

Prints the medians of ``--repeats`` runs of each and their ratios (goal: ≤ 0.5), in wall
time and in CPU time (the command and its children, all threads). ``--baseline DIR`` also
runs the participant level of another checkout of nmbids (e.g. ``git worktree add --detach
DIR <commit>``; imported from DIR with this Python's packages), alternating with this one, and
prints the ratio of their medians: the check that a change did not make one participant
slower. Run on a quiet machine:
other jobs on the two cores distort wall times, and not always by the same factor; the CPU
ratio is the steadier of the two there.

    python benchmarks/bench_participant.py [--repeats 3] [--quality default] [--nprocs 2]
                                           [--baseline DIR] [--no-syn]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd, env=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


SYN = """
import sys, ants
from nmbids.templates import get_template
t1 = ants.image_read(sys.argv[1]); tpl = ants.image_read(str(get_template().t1w))
ants.registration(fixed=tpl, moving=t1, type_of_transform="SyN")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quality", default="default", choices=("default", "fast"))
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--baseline", type=Path, help="another nmbids checkout to time alternately with this one")
    ap.add_argument("--no-syn", action="store_true", help="skip the SyN (with --baseline: only the comparison)")
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([str(bin_dir / "nmbids-simulate"), str(tmp / "ph"), "--n", "1", "--seed", "1"], check=True,
                       stdout=subprocess.DEVNULL)
        t1w = next((tmp / "ph" / "bids" / "sub-01" / "anat").glob("sub-01_T1w.nii.gz"))
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(args.nprocs))
        pipe, syn, base = [], [], []

        def participant(k: int, checkout: Path | None) -> tuple[float, float]:
            """Run k of this checkout's participant level (``checkout`` None) or the baseline's."""
            tag = f"base{k}" if checkout else f"{k}"
            cmd = [sys.executable, "-m", "nmbids", str(tmp / "ph" / "bids"), str(tmp / f"out{tag}"), "participant",
                   "-w", str(tmp / f"work{tag}"), "--nprocs", str(args.nprocs), "--skip-bids-validation",
                   "--registration-quality", args.quality]
            return _time(cmd, env=dict(os.environ, PYTHONPATH=str(checkout)) if checkout else None)

        for k in range(args.repeats):
            if args.baseline:
                base.append(participant(k, args.baseline.resolve()))
            pipe.append(participant(k, None))
            line = f"run {k + 1}: participant {pipe[-1][0]:.1f} s ({pipe[-1][1]:.1f} s CPU)"
            if args.baseline:
                line += f", baseline {base[-1][0]:.1f} s ({base[-1][1]:.1f} s CPU)"
            if not args.no_syn:
                syn.append(_time([sys.executable, "-c", SYN, str(t1w)], env=env))
                line += f", default SyN {syn[-1][0]:.1f} s ({syn[-1][1]:.1f} s CPU)"
            print(line, flush=True)
    med = {name: (statistics.median(t[0] for t in x), statistics.median(t[1] for t in x))
           for name, x in (("pipe", pipe), ("syn", syn), ("base", base)) if x}
    mp, cp = med["pipe"]
    print(f"participant level (one phantom subject, quality={args.quality}, {args.nprocs} procs): "
          f"median {mp:.1f} s wall, {cp:.1f} s CPU")
    if "base" in med:
        mb, cb = med["base"]
        print(f"baseline {args.baseline}: median {mb:.1f} s wall, {cb:.1f} s CPU; "
              f"ratio this / baseline: {mp / mb:.2f} (wall), {cp / cb:.2f} (CPU)")
    if "syn" in med:
        ms, cs = med["syn"]
        print(f"default ANTsPy SyN of the same T1w to the template: median {ms:.1f} s wall, {cs:.1f} s CPU")
        print(f"ratio participant / SyN: {mp / ms:.2f} (wall), {cp / cs:.2f} (CPU; steadier on a shared machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
