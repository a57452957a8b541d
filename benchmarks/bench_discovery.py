"""Discovery on a 2,000-subject dataset: nmbids' planner against a default pybids layout.

Simulates two small phantom subjects once, then builds a dataset of ``--n`` subjects from their
files by hard links (only the names change: ``sub-01_T1w.nii.gz`` -> ``sub-0042_T1w.nii.gz``;
sidecars are hard links too), so the dataset costs almost no disk. Then times, each in a fresh
process (imports not counted) and ``--repeats`` times:

* nmbids: ``nmbids.bids.discover(root)``, which plans the sessions of every participant (T1w,
  NM images and their classification from the sidecars);
* pybids: ``bids.BIDSLayout(root)`` with pybids' defaults, plus per subject the ``get()`` calls
  that find the same T1w and NM files.

Prints both medians (wall time and CPU time of the process: on a shared machine the CPU time
is the steadier figure), their ratio (issue goal: nmbids at least 5x faster) and checks that both
found the same T1w and NM files.

    python benchmarks/bench_discovery.py [--n 2000] [--repeats 3] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NMBIDS = """
import json, sys, time
import bids.layout  # noqa: F401  (nmbids imports pybids' entity patterns lazily; imports are not timed)
from nmbids.bids import discover
t0, c0 = time.perf_counter(), time.process_time()
plans = discover(sys.argv[1])
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
t1w = sorted({s.t1w for pl in plans.values() for s in pl if s.t1w})
nm = sorted(f for pl in plans.values() for s in pl for n in s.nm for f in n.files)
print(json.dumps({"seconds": seconds, "cpu": cpu, "t1w": t1w, "nm": nm}))
"""

PYBIDS = """
import json, sys, time
from bids import BIDSLayout
from bids.layout import Query
t0, c0 = time.perf_counter(), time.process_time()
layout = BIDSLayout(sys.argv[1])
t1w, nm = [], []
for sub in layout.get_subjects():
    query = dict(subject=sub, datatype="anat", extension=[".nii", ".nii.gz"], return_type="filename")
    t1w += layout.get(suffix="T1w", acquisition=Query.NONE, **query)
    nm += layout.get(acquisition="NM", **query)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": seconds, "cpu": cpu, "t1w": sorted(t1w), "nm": sorted(nm)}))
"""


def build(root: Path, n: int) -> Path:
    """``root/bids`` with ``n`` subjects hard-linked from a 2-subject phantom in ``root/src``."""
    subprocess.run([str(Path(sys.executable).parent / "nmbids-simulate"), str(root / "src"), "--n", "2",
                    "--seed", "1", "--t1w-res", "1.5", "--repeats", "2", "--nm-fov", "110x120"],
                   check=True, stdout=subprocess.DEVNULL)
    src, bids = root / "src" / "bids", root / "bids"
    bids.mkdir()
    for f in ("dataset_description.json", "README", "participants.json"):
        shutil.copy(src / f, bids / f)
    rows = ["participant_id"]
    for i in range(n):
        label, model = f"{i + 1:04d}", f"{i % 2 + 1:02d}"
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        for f in (src / f"sub-{model}" / "anat").iterdir():
            os.link(f, anat / f.name.replace(f"sub-{model}_", f"sub-{label}_"))
        rows.append(f"sub-{label}")
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    return bids


def run(code: str, bids: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, str(bids)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="subjects (default 2000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build the dataset here and keep it (reused when present)")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        root = args.keep
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="nmbids-bench-discovery-")
        root = Path(tmp.name)
    try:
        t0 = time.perf_counter()
        bids = root / "bids" if (root / "bids").is_dir() else build(root, args.n)
        n_files = sum(len(files) for _, _, files in os.walk(bids))
        print(f"dataset: {bids} ({n_files} files; built in {time.perf_counter() - t0:.1f} s)", flush=True)
        results = {"nmbids": [], "pybids": []}
        for k in range(args.repeats):
            for name, code in (("nmbids", NMBIDS), ("pybids", PYBIDS)):
                results[name].append(run(code, bids))
                r = results[name][-1]
                print(f"run {k + 1}: {name} {r['seconds']:.2f} s wall, {r['cpu']:.2f} s CPU", flush=True)
        mine, theirs = results["nmbids"][0], results["pybids"][0]
        same = mine["t1w"] == theirs["t1w"] and mine["nm"] == theirs["nm"]
        print(f"found: nmbids {len(mine['t1w'])} T1w + {len(mine['nm'])} NM files, "
              f"pybids {len(theirs['t1w'])} T1w + {len(theirs['nm'])} NM files: "
              f"{'the same files' if same else 'DIFFERENT files'}")
        for what in ("seconds", "cpu"):
            m = statistics.median(r[what] for r in results["nmbids"])
            p = statistics.median(r[what] for r in results["pybids"])
            unit = "wall" if what == "seconds" else "CPU"
            print(f"{unit}: nmbids discover() median {m:.2f} s; BIDSLayout(root) + get() median {p:.2f} s "
                  f"(median of {args.repeats}, {args.n} subjects); ratio pybids / nmbids {p / m:.1f}x")
        return 0 if same else 1
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
