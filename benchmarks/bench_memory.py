"""Wall time and peak memory of one participant-level run on a phantom subject.

Simulates one subject (options below; defaults are the simulator's: 1 mm T1w, a 0.8 x 0.8 x
2 mm GRE-MT slab of 20 slices over 180 x 200 mm, 3 repeats), runs ``nmbids ... participant``
once and prints its wall time and two memory figures (issue goal: peak ≤ 4 GB):

* peak of the summed resident memory (RSS) of nmbids and all its descendants (nipype's
  MultiProc workers), sampled from /proc every 0.2 s: what the job needs from the machine;
* ``ru_maxrss`` of the children: the largest single process.

    python benchmarks/bench_memory.py [--quality fast] [--nprocs 2] [--nm-inplane 0.8]
        [--nm-slices 20] [--nm-fov 180x200] [--t1w-res 1.0] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tree_rss(root: int) -> int:
    """Summed RSS in bytes of ``root`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """Run ``cmd``; return wall seconds, peak summed tree RSS and largest child's maxrss (bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"nmbids exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
    return wall, peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", default="default", choices=("default", "fast"))
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--nm-inplane", default="0.8")
    ap.add_argument("--nm-slices", default="20")
    ap.add_argument("--nm-fov", default="180x200")
    ap.add_argument("--t1w-res", default="1.0")
    ap.add_argument("--repeats", default="3")
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="nmbids-bench-memory-") as tmp:
        tmp = Path(tmp)
        subprocess.run([str(bin_dir / "nmbids-simulate"), str(tmp / "ph"), "--n", "1", "--seed", "1",
                        "--nm-inplane", args.nm_inplane, "--nm-slices", args.nm_slices, "--nm-fov", args.nm_fov,
                        "--t1w-res", args.t1w_res, "--repeats", args.repeats],
                       check=True, stdout=subprocess.DEVNULL)
        wall, peak, largest = run_measured([
            str(bin_dir / "nmbids"), str(tmp / "ph" / "bids"), str(tmp / "out"), "participant", "-w",
            str(tmp / "work"), "--nprocs", str(args.nprocs), "--skip-bids-validation",
            "--registration-quality", args.quality])
    print(f"phantom: T1w {args.t1w_res} mm, NM {args.nm_inplane} mm in-plane x {args.nm_slices} slices over "
          f"{args.nm_fov} mm, {args.repeats} repeats; quality={args.quality}, {args.nprocs} procs")
    print(f"wall time {wall:.1f} s; peak memory of the process tree {peak / 2**30:.2f} GB "
          f"(largest single process {largest / 2**30:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
