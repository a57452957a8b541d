"""Issue 17: what a run shows and how it scales.

Pipeline tests share one small phantom (1.5 mm T1w, --registration-quality fast) and two
runs (module fixtures): a parallel run of three participants, one of which fails, and a
serial run of the two good ones. ANTs registrations are only bitwise repeatable with one
ITK thread, so both runs use ``--omp-nthreads 1``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from nmbids.contract.exits import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_MEANINGS, EXIT_OK
from nmbids.parser import MEM_SURELY_MB, build_parser, parse_mem
from nmbids.progress import PROGRESS, Progress, duration
from nmbids.schedule import PARTICIPANT_MEM_GB, plan_resources

BIN = Path(sys.executable).parent
GOOD = ("01", "02")


# ---- cheap unit tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, gb, warned", [
    ("16G", 16, False), ("16GB", 16, False), ("16000MB", 16000 / 1024, False), ("512M", 0.5, False),
    ("1T", 1024, False), ("16", 16, False), ("2.5", 2.5, False), (str(MEM_SURELY_MB), MEM_SURELY_MB / 1024, True),
    ("16000", 16000 / 1024, True),
])
def test_mem_units(text, gb, warned):
    mem = parse_mem(text)
    assert mem == pytest.approx(gb)
    assert bool(mem.note) == warned


def test_mem_rejects_nonsense(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["b", "o", "participant", "--mem", "lots"])
    assert exc.value.code == 64 and "invalid memory" in capsys.readouterr().err


def test_help_lists_exit_codes_without_doubled_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: mode) (default: mode)" not in text
    assert not re.search(r"\(default: [^)]*\)\s*\(default:", text)
    epilog = text.split("exit codes:")[1]
    for code in EXIT_MEANINGS:
        assert re.search(rf"^\s+{code}\s", epilog, re.M), code
    assert EXIT_INTERRUPTED == 130 and "Ctrl-C" in EXIT_MEANINGS[130]


def test_seed_flag_has_one_name_for_both_levels():
    args = build_parser().parse_args(["b", "o", "group", "--seed", "3"])
    assert args.random_seed == 3
    assert build_parser().parse_args(["b", "o", "group"]).random_seed is None


@pytest.mark.parametrize("n, nprocs, omp, mem, expected", [
    (1, 2, None, None, (1, 2, 2, 3)),  # alone: as before (all CPUs as threads, the NM branch beside)
    (1, 16, None, None, (1, 16, 8, 16)),
    (6, 2, None, None, (2, 1, 1, 1)),  # more participants than CPUs: one CPU each
    (3, 16, None, None, (3, 5, 4, 5)),  # fewer participants than CPUs: the CPUs shared out
    (40, 16, 4, None, (4, 4, 4, 4)),  # --omp-nthreads 4: 16 // 4 at once
    (40, 16, None, 2 * PARTICIPANT_MEM_GB, (2, 8, 7, 8)),  # --mem bounds the number at once
])
def test_plan_resources(n, nprocs, omp, mem, expected):
    r = plan_resources(n, nprocs, omp, mem)
    assert (r.at_once, r.procs, r.omp, r.graph_procs) == expected


def test_progress_lines(caplog, monkeypatch):
    import logging

    clock = iter([0.0, 0.0, 1.0, 41.0, 41.0, 61.0, 61.0, 100.0, 100.0]).__next__
    monkeypatch.setattr("nmbids.progress.time.monotonic", clock)
    caplog.set_level(PROGRESS, logger="nmbids")
    p = Progress(2, "participant", logger=logging.getLogger("nmbids"))
    p.started("sub-07")
    p.started("sub-08")
    p.done("sub-07", "2 NM images, 0 warnings, report sub-07.html")
    p.done("sub-08", "1 NM image, 0 warnings, report sub-08.html", failed=True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[1/2] sub-07 started"
    assert lines[2].startswith("[1/2] sub-07 done in 41 s: 2 NM images, 0 warnings, report sub-07.html (elapsed")
    assert "left)" in lines[2]
    assert lines[3].startswith("[2/2] sub-08 FAILED after")
    assert duration(200) == "3 min 20 s" and duration(7500) == "2 h 05 min"


def test_done_line_names_the_qc_flags(tmp_path):
    """A participant whose images the QC flags stands out on the console: the done line counts the
    NM images per flag, from the QC tables as written (every session)."""
    from nmbids.qc import flag_counts
    from nmbids.schedule import Result, done_text

    for ses, flags in (("ses-1", ["low_snr;high_motion", "n/a"]), ("ses-2", ["low_snr"])):
        anat = tmp_path / "sub-07" / ses / "anat"
        anat.mkdir(parents=True)
        rows = "".join(f"sub-07\t{ses}\tx{i}.nii.gz\t{f}\n" for i, f in enumerate(flags))
        (anat / f"sub-07_{ses}_desc-nm_qc.tsv").write_text("participant_id\tsession_id\tsource\tflags\n" + rows)
    counts = flag_counts(tmp_path, "07")
    assert counts == {"low_snr": 2, "high_motion": 1}
    assert flag_counts(tmp_path, "08") == {}
    text = done_text(Result("07", EXIT_OK, 3, 0, 0, "sub-07.html", None, counts))
    assert text == "3 NM images, 0 warnings, QC flags low_snr (2), high_motion (1), report sub-07.html"
    assert done_text(Result("08", EXIT_OK, 1, 0, 0, "sub-08.html")) == "1 NM image, 0 warnings, report sub-08.html"


# ---- the pipeline on a small phantom --------------------------------------------------------------

def _env(*first: Path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, first), str(Path(__file__).resolve().parents[1])]))


def _nmbids(*argv, cwd: Path, inject: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nmbids"), *map(str, argv)], capture_output=True, text=True,
                          env=_env(*([inject] if inject else [])), cwd=cwd, timeout=1800)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("issue17")
    subprocess.run([str(BIN / "nmbids-simulate"), str(root / "sim"), "--n", "3", "--seed", "1", "--t1w-res", "1.5"],
                   check=True, capture_output=True, env=_env())
    bids = root / "sim" / "bids"
    # sub-03 fails inside its graph: its NM -> T1w registration raises (planted by a
    # sitecustomize on the subprocess's path; the inputs themselves are valid)
    inject = root / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import re\n"
        "import nmbids.registration as r\n"
        "_orig = r.nm_to_t1w\n"
        "def nm_to_t1w(nm, t1w, outprefix):\n"
        "    if re.search(r'sub[-_]?03', outprefix):\n"
        "        raise RuntimeError('planted failure of the NM to T1w registration')\n"
        "    return _orig(nm, t1w, outprefix)\n"
        "r.nm_to_t1w = nm_to_t1w\n")
    return root, bids


@pytest.fixture(scope="module")
def parallel_run(phantom):
    root, bids = phantom
    proc = _nmbids(bids, root / "par", "participant", "-w", root / "work_par", "--nprocs", "2", "--omp-nthreads", "1",
                   "--skip-bids-validation", "--registration-quality", "fast", cwd=root, inject=root / "inject")
    return SimpleNamespace(proc=proc, out=root / "par")


@pytest.fixture(scope="module")
def serial_run(phantom):
    root, bids = phantom
    proc = _nmbids(bids, root / "ser", "participant", "-w", root / "work_ser", "--nprocs", "1",
                   "--participant-label", *GOOD, "--skip-bids-validation", "--registration-quality", "fast",
                   "--clean-workdir", "--resource-monitor", cwd=root)
    return SimpleNamespace(proc=proc, out=root / "ser", work=root / "work_ser")


def test_console_shows_start_and_done_lines(parallel_run):
    err = parallel_run.proc.stderr
    for sub in ("01", "02", "03"):
        assert re.search(rf"^nmbids: \[\d/3\] sub-{sub} started: 1 session, 1 NM image$", err, re.M), err
    for sub in GOOD:
        assert re.search(rf"^nmbids: \[\d/3\] sub-{sub} done in \d+ (s|min).*: 1 NM image, 0 warnings, "
                         rf"report sub-{sub}\.html", err, re.M), err
    assert re.search(r"^nmbids: \[\d/3\] sub-03 FAILED after .*: 1 NM image, \d+ errors?, 0 warnings", err, re.M), err
    assert "about" in err and "left)" in err  # a remaining-time estimate once one is done
    assert "Traceback" not in err and "RuntimeWarning" not in err  # those go to the log file only
    assert all(ln.startswith("nmbids") for ln in err.splitlines() if ln.strip()), err


def test_failing_participant_leaves_the_others_whole(parallel_run):
    assert parallel_run.proc.returncode == EXIT_FAILURE, parallel_run.proc.stderr
    err = parallel_run.proc.stderr
    line = next(ln for ln in err.splitlines() if "sub-03" in ln and "failed" in ln and "see" in ln)
    assert "crash" in line  # the crash file, and the exception's last line beside it
    for sub in GOOD:
        anat = parallel_run.out / f"sub-{sub}" / "anat"
        assert (anat / f"sub-{sub}_desc-nm_measures.tsv").is_file()
        assert (anat / f"sub-{sub}_desc-nm_qc.tsv").is_file()
        assert (parallel_run.out / f"sub-{sub}.html").is_file()
    assert not list((parallel_run.out / "sub-03").glob("anat/*_desc-nm_measures.tsv"))


def test_parallel_gives_the_same_measures_as_serial(parallel_run, serial_run):
    assert serial_run.proc.returncode == EXIT_OK, serial_run.proc.stderr
    for sub in GOOD:
        rel = Path(f"sub-{sub}") / "anat" / f"sub-{sub}_desc-nm_measures.tsv"
        par = pd.read_csv(parallel_run.out / rel, sep="\t", dtype=str)
        ser = pd.read_csv(serial_run.out / rel, sep="\t", dtype=str)
        pd.testing.assert_frame_equal(par, ser)


def test_dry_run_writes_no_derivative(phantom, tmp_path):
    root, bids = phantom
    out = tmp_path / "dry"
    proc = _nmbids(bids, out, "participant", "--dry-run", "-w", tmp_path / "work", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    for sub in ("01", "02", "03"):
        assert f"sub-{sub}: T1w sub-{sub}/anat/sub-{sub}_T1w.nii.gz" in proc.stdout
        assert re.search(rf"NM sub-{sub}/anat/sub-{sub}_acq-NM_run-1_T1w.nii.gz: GREMT \(.+\); 3 runs", proc.stdout)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(written) == 1 and re.fullmatch(r"logs/nmbids_.*\.log", written[0]), written
    assert not (tmp_path / "work").exists()


def test_clean_workdir_and_resource_monitor(serial_run, parallel_run, phantom):
    assert serial_run.proc.returncode == EXIT_OK, serial_run.proc.stderr
    for sub in GOOD:  # finished without error: their work folders are gone
        assert not (serial_run.work / f"sub_{sub}_wf").exists()
        table = pd.read_csv(next((serial_run.out / f"sub-{sub}" / "log").glob("*/resource_monitor.tsv")), sep="\t")
        assert {"anat_nosession", "prepare_nosession_0", "quantify_nosession_0"} <= set(table["step"])
        assert (table["mem_peak_gb"] > 0).all() and (table["duration_s"] > 0).all()
    root, _ = phantom
    assert (root / "work_par" / "sub_03_wf").is_dir()  # without the flag (and failed): kept


def test_boilerplate_only(phantom, tmp_path):
    _, bids = phantom
    out = tmp_path / "bp"
    proc = _nmbids(bids, out, "participant", "--boilerplate-only", "-w", tmp_path / "work", cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.startswith("# Methods") and "nmbids" in proc.stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written[0] == "logs/CITATION.md" and len(written) == 2, written


def test_bar_on_a_terminal_only(capsys):
    import io
    import logging

    from nmbids import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    log = logging.getLogger("nmbids.test_bar")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    for stream, bar in ((io.StringIO(), False), (Tty(), True)):
        log.handlers = [progress.console_handler(0, stream)]
        with Progress(2, "participant", stream=stream, logger=log) as p:
            assert (p.bar is not None) == bar
            p.started("sub-01")
            p.done("sub-01", "1 NM image")
        text = stream.getvalue()
        assert "nmbids: [1/2] sub-01 started" in text and "nmbids: [1/2] sub-01 done in" in text
        assert ("\r" in text) == bar  # tqdm redraws the bar in place; plain lines otherwise
    assert progress._BAR is None


def test_random_seed_is_recorded(parallel_run):
    import json

    summary = next((parallel_run.out / "sub-01" / "log").glob("*/summary.json"))
    assert json.loads(summary.read_text())["random_seed"] == {"registration": 20261122}


# ---- group level: --exclude -----------------------------------------------------------------------

def test_exclude_tsv_reaches_group_participants_and_report(tmp_path):
    from nmbids.group import run_group
    from nmbids.group.synthetic import SimSpec, simulate

    simulate(tmp_path / "bids", tmp_path / "out", SimSpec(n_per_group={"HC": 4, "SZ": 4}, measures=("cr",),
                                                           rois=("SN",), sessions=("1", "2")))
    exclude = tmp_path / "exclude.tsv"
    exclude.write_text("participant_id\tsession_id\tsource\treason\n"
                       "sub-001\tn/a\tn/a\tmotion in every run (report)\n"
                       "002\t2\t\tslab misplaced\n"
                       "sub-999\tn/a\tn/a\tno such participant\n")
    assert run_group(tmp_path / "bids", tmp_path / "out", voxelwise=False, exclude=exclude) == EXIT_OK
    g = tmp_path / "out" / "group"
    status = pd.read_csv(g / "group_participants.tsv", sep="\t", dtype=str).set_index("participant_id")
    assert status.loc["sub-001", "has_measures"] == "no"
    assert "motion in every run (report)" in status.loc["sub-001", "reason"]
    assert status.loc["sub-002", "has_measures"] == "yes" and "slab misplaced" in status.loc["sub-002", "reason"]
    measures = pd.read_csv(g / "group_measures.tsv", sep="\t", dtype=str)
    assert "sub-001" not in set(measures["participant_id"])
    assert not ((measures["participant_id"] == "sub-002") & (measures["session_id"] == "ses-2")).any()
    assert ((measures["participant_id"] == "sub-002") & (measures["session_id"] == "ses-1")).any()
    report = (g / "group_report.html").read_text()
    assert "motion in every run (report)" in report
