"""The participant level on a real (one-node, local) SLURM cluster.

``tests/slurm/slurm.sh`` starts munged, slurmctld and slurmd under a temporary folder (root and
Debian's slurm-wlm + munge needed: ``make system-deps`` installs them); the tests skip when it
cannot, and the daemons are stopped afterwards. Two tiny phantom subjects go through
``docs/slurm_array.sh`` as a two-task array running side by side into one output folder, and
one through ``--use-plugin`` with nipype's SLURM plugin (every node a SLURM job).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nmbids import phantom as sim

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SLURM_SH = REPO / "tests" / "slurm" / "slurm.sh"
ARRAY_SH = REPO / "docs" / "slurm_array.sh"
NMBIDS = str(Path(sys.executable).parent / "nmbids") if (Path(sys.executable).parent / "nmbids").exists() \
    else shutil.which("nmbids")
TINY = dict(t1w_res=1.5, nm_fov=(110.0, 120.0), repeats=2)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Environment variables pointing at a running throw-away cluster."""
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root (SlurmUser=root)")
    if not shutil.which("sbatch") or not (shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()):
        pytest.skip("slurm-wlm is not installed (make system-deps installs it as root on Debian)")
    if not NMBIDS:
        pytest.skip("the nmbids console script is not installed")
    state = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(SLURM_SH), "start", str(state)], capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(state)], capture_output=True)
        pytest.skip(f"could not start a local SLURM cluster: {proc.stderr.strip().splitlines()[-1:]}")
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"))
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(state)], capture_output=True)


def _job_states(env: dict, job: str) -> dict:
    """``{task: (JobState, ExitCode)}`` of a finished job (array tasks by their index)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True,
                         check=True).stdout
    states = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        states[fields.get("ArrayTaskId", fields["JobId"])] = (fields["JobState"], fields["ExitCode"])
    return states


def _measures(out: Path, sub: str) -> pd.DataFrame:
    return pd.read_csv(out / sub / "anat" / f"{sub}_desc-nm_measures.tsv", sep="\t")


def _nothing_shared_left(*folders: Path) -> None:
    """No half-written temporary outputs and no pybids database anywhere."""
    for folder in folders:
        leftovers = [p for p in folder.rglob("*") if p.name.startswith(".tmp-")
                     or p.suffix in (".sqlite", ".db")]
        assert not leftovers, leftovers


def test_array_two_participants_side_by_side(slurm, tmp_path):
    sim.simulate_dataset(tmp_path, n_subjects=2, seed=11, **TINY)
    bids, out, work, logs = tmp_path / "bids", tmp_path / "out", tmp_path / "work", tmp_path / "logs"
    logs.mkdir()  # SLURM does not create the folder of --output
    env = dict(slurm, BIDS_DIR=str(bids), OUT_DIR=str(out), WORK_ROOT=str(work), NMBIDS_CMD=NMBIDS,
               NMBIDS_EXTRA_ARGS="--registration-quality fast")
    # one CPU each, so that both tasks run at the same time on the two-CPU node
    proc = subprocess.run(["sbatch", "--parsable", "--wait", "--array=1-2", "--cpus-per-task=1", "--mem=3G",
                           f"--output={logs}/nmbids_%A_%a.out", str(ARRAY_SH)],
                          env=env, capture_output=True, text=True, timeout=900)
    job = proc.stdout.strip().split(";")[0]
    task_logs = "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    assert proc.returncode == 0, proc.stderr + task_logs
    assert _job_states(slurm, job) == {"1": ("COMPLETED", "0:0"), "2": ("COMPLETED", "0:0")}, task_logs
    for sub in ("sub-01", "sub-02"):
        assert f"{sub} on " in task_logs
        assert set(_measures(out, sub)["participant_id"]) == {sub}
        assert (out / f"{sub}.html").is_file()
        assert (work / sub / f"sub_{sub[4:]}_wf").is_dir()  # each task its own work directory
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    _nothing_shared_left(bids, out, work)


def test_use_plugin_slurm(slurm, tmp_path):
    sim.simulate_dataset(tmp_path, n_subjects=1, seed=12, **TINY)
    plugin = tmp_path / "slurm.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --cpus-per-task=1 --mem=3G\n")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in slurm.items() if k != "LOGNAME"}  # as in containers: nipype needs it, nmbids sets it
    proc = subprocess.run([NMBIDS, str(tmp_path / "bids"), str(out), "participant", "-w", str(work),
                           "--skip-bids-validation", "--registration-quality", "fast", "--nprocs", "1",
                           "--use-plugin", str(plugin)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert set(_measures(out, "sub-01")["participant_id"]) == {"sub-01"}
    # every node ran as a SLURM job: nipype writes one batch script and one job log per node
    batch = work / "sub_01_wf" / "batch"
    nodes = [p.parent.name for p in (work / "sub_01_wf").rglob("_node.pklz")]
    # T1w N4, T1w -> template, T1w resampled, prepare, coregister, quantify as jobs; the two
    # sinks (ds_*) in the scheduler's process
    n_nodes = len([n for n in nodes if not n.startswith("ds_")])
    assert n_nodes == 6 and len(nodes) == 8, nodes
    assert len(list(batch.glob("batchscript_*.sh"))) == n_nodes
    jobs = sorted(int(p.stem.split("-")[1]) for p in batch.glob("slurm-*.out"))
    assert len(jobs) == n_nodes
    states = [_job_states(slurm, str(j)) for j in jobs]
    assert all(list(s.values()) == [("COMPLETED", "0:0")] for s in states), states
    _nothing_shared_left(out, work)
