"""Benchmark the group level on synthetic participant tables (no images).

Builds synthetic outputs for 500 and 5,000 participants in a temporary folder
(8 regions x 3 hemispheres x 7 measures = 168 rows per participant, QC tables,
participants.tsv with group/age/sex/site) and prints the median wall time of
three runs of ``run_group(..., voxelwise=False)`` (age and sex as covariates,
reports included), with the CPU time of the process (wall time on a shared machine
depends on the load). The first run also pays the imports (statsmodels, matplotlib).

    python benchmarks/bench_group.py [N ...]
"""
from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nmbids.group import run_group
from nmbids.group.synthetic import SimSpec, simulate

ROIS = ("SN", "VTA", "LC", "LC_rostral", "LC_middle", "LC_caudal", "CC", "PT")
MEASURES = ("cr", "cr_roimean", "cr_threshold", "cnr", "volume_mm3", "coverage", "reference_value")


def bench(n: int, repeats: int = 3) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix=f"nmbids-bench-{n}-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        spec = SimSpec(n_per_group={"HC": n // 2, "SZ": n - n // 2}, effects={"SZ": 0.5}, rois=ROIS,
                       measures=MEASURES, sites={"A": 0.0, "B": 0.5}, seed=1)
        simulate(tmp / "bids", tmp / "out", spec)
        build = time.perf_counter() - t0
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            rc = run_group(tmp / "bids", tmp / "out", group_column="group", covariates=("age", "sex"),
                           voxelwise=False)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if rc != 0:
                raise SystemExit(f"run_group returned {rc}")
        return statistics.median(times), statistics.median(cpu), build


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.ERROR)
    sizes = [int(a) for a in argv] or [500, 5000]
    for n in sizes:
        median, cpu, build = bench(n)
        print(f"{n:>6} participants: run_group(voxelwise=False) median of 3 = {median:.1f} s wall, "
              f"{cpu:.1f} s CPU (building the synthetic outputs took {build:.1f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
