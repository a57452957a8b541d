"""Participant-level wall time for one phantom subject beside one default ANTsPy SyN.

Prints the medians of ``--repeats`` runs of each and their ratio (issue goal: ≤ 1.5, later
≤ 0.5). Run on a quiet machine: other jobs on the two cores distort both numbers alike but
not always by the same factor.

    python benchmarks/bench_participant.py [--repeats 3] [--quality default] [--nprocs 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd, env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


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
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([str(bin_dir / "nmbids-simulate"), str(tmp / "ph"), "--n", "1", "--seed", "1"], check=True,
                       stdout=subprocess.DEVNULL)
        t1w = next((tmp / "ph" / "bids" / "sub-01" / "anat").glob("sub-01_T1w.nii.gz"))
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(args.nprocs))
        pipe, syn = [], []
        for k in range(args.repeats):
            pipe.append(_time([str(bin_dir / "nmbids"), str(tmp / "ph" / "bids"), str(tmp / f"out{k}"), "participant",
                               "-w", str(tmp / f"work{k}"), "--nprocs", str(args.nprocs), "--skip-bids-validation",
                               "--registration-quality", args.quality]))
            syn.append(_time([sys.executable, "-c", SYN, str(t1w)], env=env))
            print(f"run {k + 1}: participant {pipe[-1]:.1f} s, default SyN {syn[-1]:.1f} s", flush=True)
    mp, ms = statistics.median(pipe), statistics.median(syn)
    print(f"participant level (one phantom subject, quality={args.quality}, {args.nprocs} procs): median {mp:.1f} s")
    print(f"default ANTsPy SyN of the same T1w to the template: median {ms:.1f} s")
    print(f"ratio participant / SyN: {mp / ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
