"""Faults: bad inputs, killed jobs, full or read-only disks, parallel jobs, real layouts.

Every case must end in one of the documented ways: a one-line message naming the participant,
the file and the problem (the detail in the log or a crash file), the documented exit code,
outputs written atomically, and every good participant's outputs intact.

The pipeline runs share one small phantom and one work directory (module fixtures), in this
order: a first run of sub-01 (no network), sub-02 killed twice and resumed, both at once into
a new output directory (cached nodes), then the disk tests (cached nodes). CLI runs go through
a subprocess whose ``connect`` is blocked (``sitecustomize`` on ``PYTHONPATH``).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from nmbids import phantom as sim
from nmbids.bids import load_layout, plan_participant
from nmbids.cli import main as nmbids_main

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = SHARED / "data" / "bids-examples"
PHANTOM = dict(t1w_res=1.5, nm_fov=(110.0, 120.0), repeats=2, repeats_layout="runs")
FAST = ["--registration-quality", "fast", "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1"]
TIMEOUT = 900  # a hang fails the test instead of blocking the suite

# Replaces every way out to the network by an error, and records the attempt.
NO_NETWORK = '''
import os, socket
_log = os.environ.get("NMBIDS_TEST_NET_LOG")
def _refuse(what, *args):
    if _log:
        with open(_log, "a") as fh:
            fh.write(f"{os.getpid()} {what} {args!r}\\n")
    raise OSError("network access is blocked in this test")
_connect = socket.socket.connect
def connect(self, address):
    if self.family == socket.AF_UNIX:
        return _connect(self, address)
    _refuse("connect", address)
socket.socket.connect = connect
socket.socket.connect_ex = lambda self, address: connect(self, address)
socket.getaddrinfo = lambda *a, **k: _refuse("getaddrinfo", a)
'''


# ---- helpers ---------------------------------------------------------------------------------------

def _env(tmp: Path) -> dict:
    site = tmp / "no_network"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site)] + [os.environ.get("PYTHONPATH", "")]),
               NMBIDS_TEST_NET_LOG=str(tmp / "network_attempts.log"))
    return env


def _start(tmp: Path, *argv) -> subprocess.Popen:
    """``nmbids ARGV`` in its own process group (so that ``kill -9`` reaches every child)."""
    return subprocess.Popen([sys.executable, "-m", "nmbids", *map(str, argv)], env=_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _cli(tmp: Path, *argv) -> subprocess.CompletedProcess:
    proc = _start(tmp, *argv)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        _kill(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for(predicate, proc: subprocess.Popen, step: float = 0.01) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert proc.poll() is None, f"nmbids ended (code {proc.returncode}) before the kill point"
        assert time.monotonic() < deadline, "nmbids never reached the kill point"
        time.sleep(step)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " ERROR: " in ln]


def _assert_complete(folder: Path) -> list[Path]:
    """Every file with a final name under ``folder`` is whole; return them."""
    finals = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]
    for p in finals:
        if p.name.endswith(".gz"):
            with gzip.open(p) as fh:  # a truncated gzip stream raises here
                fh.read()
        if p.name.endswith((".nii", ".nii.gz")):
            np.asanyarray(nb.load(str(p)).dataobj)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".tsv":
            pd.read_csv(p, sep="\t")
    return finals


def _digests(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _result(work: Path, sub: str, node: str, workflow: str = "anat_nosession_wf") -> Path:
    """nipype's result file of a node of the participant's graph (in its sub-workflow's folder)."""
    return work / f"sub_{sub}_wf" / workflow / node / f"result_{node}.pklz"


@contextlib.contextmanager
def _mount(*commands):
    """Run mount commands (root only); skip when they are not permitted; undo at the end."""
    target = commands[0][-1]
    for cmd in commands:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            subprocess.run(["umount", target], capture_output=True)
            pytest.skip(f"cannot {' '.join(cmd)}: {res.stderr.strip()}")
    try:
        yield Path(target)
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True)


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    sim.simulate_dataset(root, n_subjects=2, seed=3, **PHANTOM)
    return root


@pytest.fixture(scope="module")
def first_run(phantom):
    """sub-01 processed once, with the network blocked: the reference outputs."""
    out = phantom / "out-first"
    res = _cli(phantom, phantom / "bids", out, "participant", "-w", phantom / "work",
               "--participant-label", "01", *FAST)
    return res, out


# ---- no network --------------------------------------------------------------------------------

def test_network_blocker_works(phantom):
    """The blocker itself: a connection attempt fails and is recorded (so the test below can fail)."""
    log = phantom / "network_attempts.log"
    res = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
                         env=dict(_env(phantom), NMBIDS_TEST_NET_LOG=str(phantom / "probe.log")),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "network access is blocked" in res.stderr
    assert "192.0.2.1" in (phantom / "probe.log").read_text()
    assert not log.exists() or "192.0.2.1" not in log.read_text()


@pytest.mark.slow
def test_participant_runs_without_network(phantom, first_run):
    res, out = first_run
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "sub-01" / "anat" / "sub-01_desc-nm_measures.tsv").exists()
    log = phantom / "network_attempts.log"
    assert not log.exists(), log.read_text()


# ---- kill -9, resume, parallel jobs ------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_and_resumed(phantom):
    """sub-02: killed (-9) after its T1w registration, killed again while writing outputs, resumed."""
    bids, out, work = phantom / "bids", phantom / "out-killed", phantom / "work"
    argv = (bids, out, "participant", "-w", work, "--participant-label", "02", *FAST)
    anat = _result(work, "02", "anat_nosession")
    anat_dir = out / "sub-02" / "anat"
    seen = {}

    proc = _start(phantom, *argv)
    try:
        _wait_for(anat.exists, proc, step=0.2)
    finally:
        _kill(proc)
    seen["after_kill_1"] = _assert_complete(out)
    seen["anat_mtime"] = anat.stat().st_mtime_ns

    proc = _start(phantom, *argv)
    try:  # the first derivative (or its temporary file) appears: kill while writing
        _wait_for(lambda: anat_dir.is_dir() and any(anat_dir.iterdir()), proc)
    finally:
        _kill(proc)
    seen["after_kill_2"] = _assert_complete(out)
    seen["partial"] = sorted(p.name for p in anat_dir.iterdir())
    # the processing nodes (the sinks, ds_*, always run: they re-copy the outputs)
    seen["node_mtimes"] = {p: p.stat().st_mtime_ns for p in (work / "sub_02_wf").glob("*/*/result_*.pklz")
                           if not p.parent.name.startswith("ds_")}

    seen["resumed"] = _cli(phantom, *argv)
    return out, work, seen


@pytest.mark.slow
def test_kill9_leaves_no_partial_outputs_and_resume_completes(killed_and_resumed):
    out, work, seen = killed_and_resumed
    # while killed: no file with a final name is truncated (only hidden .tmp-* files can be)
    assert not [p for p in seen["after_kill_1"] if "sub-02/anat" in p.as_posix()]
    assert seen["partial"], "the second kill came before any output was started"
    res = seen["resumed"]
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    # nipype's cache was reused: no finished node ran again
    # every node of the participant had finished: T1w N4, T1w -> template, the T1w resampled
    # into the template, prepare, coreg, quantify
    assert seen["node_mtimes"] and len(seen["node_mtimes"]) == 6
    for path, mtime in seen["node_mtimes"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path.parent.name} ran again"
    assert _result(work, "02", "anat_nosession").stat().st_mtime_ns == seen["anat_mtime"]
    finals = _assert_complete(out)
    names = {p.name for p in finals}
    assert {"sub-02_desc-nm_measures.tsv", "sub-02_desc-preproc_T1w.nii.gz",
            "sub-02_acq-NM_space-MNI152NLin2009aSym_crmap.nii.gz", "sub-02.html"} <= names
    assert not list(out.rglob(".tmp-*")), "the resumed run left the killed run's temporary files"


@pytest.mark.slow
def test_two_participant_jobs_into_one_output_dir(phantom, first_run, killed_and_resumed):
    """As on a SLURM array: sub-01 and sub-02 at once, same output (and work) directory."""
    assert first_run[0].returncode == 0 and killed_and_resumed[2]["resumed"].returncode == 0
    out = phantom / "out-parallel"
    procs = [_start(phantom, phantom / "bids", out, "participant", "-w", phantom / "work",
                    "--participant-label", sub, *FAST) for sub in ("01", "02")]
    results = []
    for proc in procs:
        try:
            results.append(proc.communicate(timeout=TIMEOUT))
        finally:
            _kill(proc)
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "nmbids"
    _assert_complete(out)
    assert not list(out.rglob(".tmp-*"))
    assert len(list((out / "logs").glob("nmbids_*.log"))) == 2
    # nothing lost: each participant's derivatives are byte-identical to its single-job run
    for sub, ref in (("01", first_run[1]), ("02", killed_and_resumed[0])):
        got, want = _digests(out / f"sub-{sub}" / "anat"), _digests(ref / f"sub-{sub}" / "anat")
        assert got and got == want, sub
    assert _digests(out / "atlas") == _digests(first_run[1] / "atlas")


# ---- file systems --------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_disk_is_an_io_error_without_partial_files(phantom, first_run, tmp_path):
    """A 2 MB output file system: the T1w derivative does not fit (nodes come from the cache)."""
    assert first_run[0].returncode == 0
    (tmp_path / "small").mkdir()
    with _mount(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(tmp_path / "small")]) as small:
        out = small / "out"
        before = _digests(first_run[1])
        res = _cli(tmp_path, phantom / "bids", out, "participant", "-w", phantom / "work",
                   "--participant-label", "01", *FAST)
        assert res.returncode == 74, res.stderr
        assert "Traceback" not in res.stderr and "Logging error" not in res.stderr
        errors = _error_lines(res.stderr)
        assert len(errors) == 1, res.stderr
        line = errors[0]
        assert "sub-01" in line and "No space left on device" in line
        assert str(out / "sub-01" / "anat") in line and ".tmp-" not in line
        _assert_complete(out)  # nothing truncated under a final name
        assert not list(out.rglob(".tmp-*"))
        assert not (out / "sub-01" / "anat" / "sub-01_desc-nm_measures.tsv").exists()
        assert _digests(first_run[1]) == before  # the good outputs elsewhere are untouched


@pytest.mark.slow
def test_read_only_bids_dir_works(phantom, first_run, tmp_path):
    """The BIDS dir remounted read-only in place (root ignores chmod); nodes come from the cache."""
    assert first_run[0].returncode == 0
    bids = phantom / "bids"
    before = _digests(bids)
    with _mount(["mount", "--bind", str(bids), str(bids)],
                ["mount", "-o", "remount,ro,bind", str(bids)]):
        with pytest.raises(OSError):
            (bids / "probe").write_text("")
        out = tmp_path / "out"
        res = _cli(tmp_path, bids, out, "participant", "-w", phantom / "work", "--participant-label", "01",
                   *FAST)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert _digests(out / "sub-01" / "anat") == _digests(first_run[1] / "sub-01" / "anat")
    assert _digests(bids) == before


def test_output_dir_blocked_by_a_file(phantom, tmp_path, capfd):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    code = nmbids_main([str(phantom / "bids"), str(blocker), "participant", "-w", str(tmp_path / "w"),
                        "--skip-bids-validation"])
    err = capfd.readouterr().err
    assert code == 73
    assert len(err.strip().splitlines()) == 1 and "cannot write to" in err and str(blocker) in err
    assert "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def test_output_dir_on_read_only_mount(phantom, tmp_path, capfd):
    (tmp_path / "ro").mkdir()
    with _mount(["mount", "--bind", str(tmp_path / "ro"), str(tmp_path / "ro")],
                ["mount", "-o", "remount,ro,bind", str(tmp_path / "ro")]) as ro:
        code = nmbids_main([str(phantom / "bids"), str(ro / "out"), "participant", "-w", str(tmp_path / "w"),
                            "--skip-bids-validation"])
    err = capfd.readouterr().err
    assert code == 73
    assert len(err.strip().splitlines()) == 1 and "Read-only file system" in err and str(ro / "out") in err
    assert "Traceback" not in err


# ---- bad inputs: refused before any work, one line each ----------------------------------------

def _clone(bids: Path, src: str, dst: str) -> Path:
    """Copy sub-SRC to sub-DST (names included); return the new anat folder."""
    anat = bids / f"sub-{dst}" / "anat"
    anat.mkdir(parents=True)
    for f in (bids / f"sub-{src}" / "anat").iterdir():
        shutil.copyfile(f, anat / f.name.replace(f"sub-{src}", f"sub-{dst}"))
    return anat


def _rewrite(path: Path, fn) -> None:
    img = nb.load(str(path))
    data = fn(np.asanyarray(img.dataobj).astype(np.float32))
    nb.save(nb.Nifti1Image(data, img.affine), str(path))


def _plant(anat: Path, fault: str) -> None:
    sub = anat.parent.name
    nm1 = anat / f"{sub}_acq-NM_run-1_T1w.nii.gz"
    t1w = anat / f"{sub}_T1w.nii.gz"
    if fault == "truncated":
        nm1.write_bytes(nm1.read_bytes()[: nm1.stat().st_size // 2])
    elif fault == "allzero":
        _rewrite(nm1, np.zeros_like)
    elif fault == "nan":
        _rewrite(nm1, lambda d: np.where(np.arange(d.size).reshape(d.shape) % 97 == 0, np.nan, d))
    elif fault == "emptyt1w":
        t1w.write_bytes(b"")
    elif fault == "missingt1w":
        t1w.unlink()
        t1w.with_name(f"{sub}_T1w.json").unlink()
    elif fault == "fourdt1w":
        _rewrite(t1w, lambda d: np.stack([d, d], axis=-1))
    elif fault == "fived":
        _rewrite(nm1, lambda d: d[..., None, None].repeat(2, axis=-1))
    elif fault == "badjson":
        for j in anat.glob(f"{sub}_acq-NM_run-*_T1w.json"):
            j.write_text('{"MTState": true,')


# participant label -> (file named in the line, words of the problem); and the extra line, if any
FAULTS = {
    "truncated": ("acq-NM_run-1_T1w.nii.gz", "cannot be read"),
    "allzero": ("acq-NM_run-1_T1w.nii.gz", "all voxels are zero"),
    "nan": ("acq-NM_run-1_T1w.nii.gz", "NaN"),
    "emptyt1w": ("T1w.nii.gz", "empty (0 bytes)"),
    "missingt1w": ("acq-NM_run-1_T1w.nii.gz", "no usable T1w"),
    "fourdt1w": ("T1w.nii.gz", "is 4D"),
    "fived": ("acq-NM_run-1_T1w.nii.gz", "unexpected shape"),
    "badjson": ("acq-NM_run-1_T1w.json", "not valid JSON"),
}


@pytest.fixture(scope="module")
def fault_corpus(phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    bids = root / "bids"
    shutil.copytree(phantom / "bids", bids)
    for label in FAULTS:
        _plant(_clone(bids, "01", label), label)
    return root


def test_bad_inputs_are_refused_with_one_line_each(fault_corpus, capfd):
    """Every participant has one fault: each is refused before any registration, by name."""
    root = fault_corpus
    out = root / "out"
    code = nmbids_main([str(root / "bids"), str(out), "participant", "-w", str(root / "work"),
                        "--skip-bids-validation", "--participant-label", *FAULTS])
    err = capfd.readouterr().err
    assert code == 65  # bad data somewhere; it outranks "input missing" (66)
    assert "Traceback" not in err
    errors = _error_lines(err)
    for label, (name, words) in FAULTS.items():
        mine = [ln for ln in errors if f"sub-{label}: " in ln]
        assert any(f"sub-{label}_{name}" in ln and words in ln for ln in mine), (label, mine)
        summary = json.loads(next((out / f"sub-{label}" / "log").glob("*/summary.json")).read_text())
        assert any(words in e["message"] for e in summary["errors"]), label
        assert not (out / f"sub-{label}" / "anat").exists()
    # the T1w refusals also say that the NM image cannot be registered (exit 66 ranks below 65)
    assert any("sub-emptyt1w: " in ln and "no usable T1w" in ln for ln in errors)
    assert not (root / "work" / "sub_truncated_wf").exists()  # nothing was started


def test_missing_sidecars_fall_back_to_the_file_name(phantom, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(phantom / "bids", bids)
    for j in (bids / "sub-01" / "anat").glob("*.json"):
        j.unlink()
    plan = plan_participant(load_layout(bids), bids, "01")[0]
    assert plan.t1w.endswith("sub-01_T1w.nii.gz")
    assert [n.acq_type for n in plan.nm] == ["GREMT"]
    assert any("acq" in e for e in plan.nm[0].evidence)


def test_duplicate_runs_are_repeats_and_duplicate_files_are_used_once(phantom, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(phantom / "bids", bids)
    anat = bids / "sub-01" / "anat"
    # the same run twice, once uncompressed: one is used, the other listed as a duplicate
    img = nb.load(str(anat / "sub-01_acq-NM_run-1_T1w.nii.gz"))
    nb.save(img, str(anat / "sub-01_acq-NM_run-1_T1w.nii"))
    plan = plan_participant(load_layout(bids), bids, "01")[0]
    assert len(plan.nm) == 1
    assert [Path(f).name for f in plan.nm[0].files] == ["sub-01_acq-NM_run-1_T1w.nii.gz",
                                                        "sub-01_acq-NM_run-2_T1w.nii.gz"]
    assert {"path": "sub-01/anat/sub-01_acq-NM_run-1_T1w.nii",
            "reason": "duplicate of sub-01_acq-NM_run-1_T1w.nii.gz, which is used"} in plan.ignored


@pytest.mark.slow
def test_extreme_obliquity_and_flipped_storage(phantom, first_run, tmp_path):
    """sub-01 with the head pitched 45 degrees and every image stored with x and y reversed."""
    assert first_run[0].returncode == 0
    bids = tmp_path / "bids"
    shutil.copytree(phantom / "bids", bids)
    a = np.deg2rad(45.0)
    pitch = np.eye(4)
    pitch[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    for f in sorted((bids / "sub-01" / "anat").glob("*.nii.gz")):
        img = nb.load(str(f))
        data = np.asanyarray(img.dataobj)
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = np.array(data.shape[:2]) - 1
        affine = pitch @ img.affine @ flip
        out = nb.Nifti1Image(np.ascontiguousarray(data[::-1, ::-1]), affine, img.header)
        out.set_sform(affine)
        out.set_qform(affine)
        nb.save(out, str(f))
        assert nb.aff2axcodes(affine)[0] == "R"  # stored right-to-left now (was LAS/RAS)
    out = tmp_path / "out"
    res = _cli(tmp_path, bids, out, "participant", "-w", tmp_path / "work", "--participant-label", "01", *FAST)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr

    def sn(folder):
        m = pd.read_csv(folder / "sub-01" / "anat" / "sub-01_desc-nm_measures.tsv", sep="\t")
        return m[(m.roi == "SN") & (m.measure == "cr") & (m.hemi != "bilateral")].set_index("hemi")["value"]

    qc = pd.read_csv(out / "sub-01" / "anat" / "sub-01_desc-nm_qc.tsv", sep="\t")
    assert qc["coverage_SN"].iloc[0] > 0.9
    # the same subject, so the same contrast as in its plainly stored run
    assert np.allclose(sn(out), sn(first_run[1]), atol=0.05), (sn(out), sn(first_run[1]))


# ---- real layouts ------------------------------------------------------------------------------

def _example_datasets() -> list[Path]:
    roots = [Path(os.environ["NMBIDS_BIDS_EXAMPLES"])] if os.environ.get("NMBIDS_BIDS_EXAMPLES") else []
    roots.append(EXAMPLES)
    found = {}
    for root in roots:
        if root.is_dir():
            for ds in sorted(root.iterdir()):
                if (ds / "dataset_description.json").is_file():
                    found.setdefault(ds.name, ds)
    return list(found.values())


# what the four datasets in ../shared must give; a full checkout adds others (any documented code)
EXPECTED = {"ds001": (18, "no NM images"), "7t_trt": (18, "no NM images"),
            "qmri_mpm": (66, "sub-01: sub-01/anat/"), "qmri_mtsat": (66, "sub-01: sub-01/anat/")}  # no T1w
DOCUMENTED = {0, 1, 18, 65, 66}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", _example_datasets() or [None], ids=lambda d: d.name if d else "none")
def test_real_layouts_end_cleanly(dataset, tmp_path):
    """Every bids-examples dataset: no traceback, no hang, a documented code (set
    NMBIDS_BIDS_EXAMPLES=/path/to/bids-examples to run a full checkout)."""
    if dataset is None:
        pytest.skip("no bids-examples: ../shared/data/bids-examples absent and NMBIDS_BIDS_EXAMPLES unset")
    out = tmp_path / "out"
    res = _cli(tmp_path, dataset, out, "participant", "-w", tmp_path / "work", *FAST)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert all(ln.startswith("nmbids") for ln in res.stderr.splitlines() if ln.strip()), res.stderr[-3000:]
    want = EXPECTED.get(dataset.name)
    if want:
        assert res.returncode == want[0], res.stderr
        assert want[1] in res.stderr
    else:
        assert res.returncode in DOCUMENTED, res.stderr
    if res.returncode != 0:  # nothing measured: the group level says so, in one line
        grp = _cli(tmp_path, dataset, out, "group", "--no-voxelwise")
        assert grp.returncode == 66, grp.stderr
        assert "Traceback" not in grp.stderr and len(_error_lines(grp.stderr)) == 1
    assert not (tmp_path / "network_attempts.log").exists()


# ---- a figure that cannot be drawn ---------------------------------------------------------------

@pytest.mark.slow
def test_slab_off_target_is_a_note_not_a_traceback(tmp_path):
    """An NM slab 70 mm above the midbrain: one participant, low resolution, one repeat (about
    25 s). The run names the problem and exits 65; the CR-map figure, which has nothing to draw,
    is a note in the report; no traceback reaches the console."""
    sim.simulate_dataset(tmp_path, n_subjects=1, seed=1, t1w_res=2.0, nm_fov=(100.0, 100.0), repeats=1)
    nm = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_acq-NM_T1w.nii.gz"
    img = nb.load(str(nm))
    affine = img.affine.copy()
    affine[2, 3] += 70.0  # superior: the slab now sits in the cerebrum, far from SN, VTA and LC
    moved = nb.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header)
    moved.set_sform(affine)
    moved.set_qform(affine)
    nb.save(moved, str(nm))
    out = tmp_path / "out"
    res = _cli(tmp_path, tmp_path / "bids", out, "participant", "-w", tmp_path / "work", *FAST)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 65, res.stderr
    assert all(ln.startswith("nmbids") for ln in res.stderr.splitlines() if ln.strip()), res.stderr
    assert any("the slab misses the nuclei" in ln for ln in _error_lines(res.stderr))
    assert "0 of 1 NM image(s) measured" in res.stderr.splitlines()[-1]
    html = (out / "sub-01.html").read_text()
    assert "no CR map inside the brainstem: the slab misses it" in html
    assert "could not be drawn" not in html
    log = next((out / "logs").glob("nmbids_*.log")).read_text()
    assert "no CR map inside the brainstem" in log


def test_console_never_prints_a_traceback(capfd):
    """Even at -vv, and even for a record that carries exc_info: one line on the console."""
    import logging

    from nmbids.cli import _setup_console

    _setup_console(2)
    log = logging.getLogger("nmbids.reports")
    try:
        raise ValueError("boom")
    except ValueError:
        log.warning("figure failed", exc_info=True)
        log.debug("detail:\n%s", __import__("traceback").format_exc())
    err = capfd.readouterr().err
    assert "Traceback" not in err and "boom" not in err
    assert err.splitlines() == ["nmbids WARNING: figure failed (traceback in the log file)",
                                "nmbids DEBUG: detail: (traceback in the log file)"]
