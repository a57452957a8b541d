"""Throughput of one participant-level run over several phantom subjects.

Prints the run's wall time, its CPU time (the command and all its children), the CPU
utilisation CPU s / (wall s × nprocs) and the wall seconds per subject. The issue-17 goal:
at least 0.95 with ``--nprocs 2`` on 6 subjects on a 2-core machine (0.87 before
participants ran in parallel). Run it on a quiet machine: other jobs take CPU from the run
and lower the figure.

    python benchmarks/bench_throughput.py [--n 6] [--nprocs 2] [--quality default]
        [--t1w-res 1.0] [--extra "--omp-nthreads 1"]
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="phantom subjects")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--quality", default="default", choices=("default", "fast"))
    ap.add_argument("--t1w-res", default="1.0", help="T1w voxel size of the phantom (mm)")
    ap.add_argument("--extra", default="", help="more nmbids options, e.g. '--omp-nthreads 1'")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(bin_dir / "nmbids-simulate"), str(root / "ph"), "--n", str(args.n), "--seed", "1",
                        "--t1w-res", args.t1w_res], check=True, stdout=subprocess.DEVNULL)
        cmd = [str(bin_dir / "nmbids"), str(root / "ph" / "bids"), str(root / "out"), "participant",
               "-w", str(root / "work"), "--nprocs", str(args.nprocs), "--skip-bids-validation",
               "--registration-quality", args.quality, *shlex.split(args.extra)]
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            print(f"nmbids exited with {proc.returncode}", file=sys.stderr)
            return 1
    print(f"{args.n} subjects, --nprocs {args.nprocs}, quality {args.quality}, T1w {args.t1w_res} mm"
          f"{' ' + args.extra if args.extra else ''} (load average before the run: {load:.1f})")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s, CPU utilisation {cpu / (wall * args.nprocs):.2f} "
          f"(CPU s / (wall s x {args.nprocs})), {wall / args.n:.1f} s per subject")
    return 0


if __name__ == "__main__":
    sys.exit(main())
