"""Discovery on OpenNeuro-style NM datasets, as they are really named (issue 19).

Each dataset is a tree built here, in a tmp dir: sidecars written by the test (in the styles
seen on OpenNeuro) and tiny NIfTI images of the right grid (all zeros, so that nothing is
registered: the CLI runs end in preflight). No public data is copied.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from nmbids.acquisitions import FSE, GREMT, HEAD_MIN_EXTENT_MM, HEAD_MIN_SLICES, slab_shape
from nmbids.bids import NM_NAMING_HINT, load_layout, plan_participant
from nmbids.cli import main as nmbids_main

MPRAGE = {"MRAcquisitionType": "3D", "ScanningSequence": "GR\\IR", "SequenceVariant": "SK\\SP\\MP",
          "SequenceName": "*tfl3d1_16ns", "InversionTime": 0.9, "RepetitionTime": 2.3}
TSE = {"MRAcquisitionType": "2D", "ScanningSequence": "SE", "SequenceVariant": "SK\\SP",
       "SequenceName": "*tse2d1rs3", "EchoTrainLength": 3, "RepetitionTime": 0.6}
GRE_MT = {"MRAcquisitionType": "2D", "ScanningSequence": "GR", "SequenceName": "*fl2d1", "MTState": True}
# grids: a 1.5 mm head, a 10-slice TSE slab through the pons, a 20-slice GRE-MT slab
HEAD = ((100, 120, 100), (1.5, 1.5, 1.5))
TSE_SLAB = ((64, 64, 10), (0.5, 0.5, 3.0))
GRE_SLAB = ((64, 64, 20), (0.6, 0.6, 2.0))


def _dataset(tmp_path: Path, files: dict, top: dict | None = None) -> Path:
    """A BIDS tree: ``files`` maps relative NIfTI paths to (grid, sidecar or None); ``top``
    maps top-level sidecar names to their content."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    for name, content in (top or {}).items():
        (root / name).write_text(json.dumps(content))
    for rel, (grid, sidecar) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shape, zooms = grid
        img = nb.Nifti1Image(np.zeros(shape, np.uint8), np.diag(list(zooms) + [1.0]))
        img.header.set_zooms(zooms)
        nb.save(img, str(path))
        if sidecar is not None:
            name = path.name.split(".")[0]
            (path.parent / f"{name}.json").write_text(json.dumps(sidecar))
    return root


def _plan(root: Path, participant: str = "01") -> dict:
    return {p.session: p for p in plan_participant(load_layout(root), root, participant)}


def _name(path: str | None) -> str | None:
    return Path(path).name if path else None


def test_slab_thresholds():
    assert slab_shape(*TSE_SLAB) == "10 slices, 30 mm"
    assert slab_shape(*GRE_SLAB) == "20 slices, 40 mm"
    assert slab_shape(*HEAD) is None
    # 40 thick slices over 120 mm are still a slab; a thin stack of many slices too
    assert slab_shape((256, 256, 40), (0.5, 0.5, 3.0)) == "40 slices, 120 mm"
    assert slab_shape((200, 200, 60), (1.0, 1.0, 1.0)) == f"60 slices, {60:d} mm"
    assert slab_shape((200, 200, HEAD_MIN_SLICES), (1.0, 1.0, HEAD_MIN_EXTENT_MM / HEAD_MIN_SLICES)) is None


def test_plain_spin_echo_slab_beside_an_mprage(tmp_path):
    """The FSE slab named plainly (run-2_T1w) is NM, the acq-wholebrain MPRAGE the T1w."""
    root = _dataset(tmp_path, {
        "sub-01/ses-post/anat/sub-01_ses-post_acq-wholebrain_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/ses-post/anat/sub-01_ses-post_run-2_T1w.nii.gz": (TSE_SLAB, TSE),
    })
    plan = _plan(root)["post"]
    assert _name(plan.t1w) == "sub-01_ses-post_acq-wholebrain_T1w.nii.gz"
    assert [(_name(n.source), n.acq_type) for n in plan.nm] == [("sub-01_ses-post_run-2_T1w.nii.gz", FSE)]
    evidence = plan.nm[0].evidence
    assert "ScanningSequence=SE" in evidence and "EchoTrainLength=3" in evidence
    assert any("slab (10 slices, 30 mm)" in e for e in evidence)
    # one T1w-suffixed candidate left for the anatomy: no choice to report
    assert not plan.warnings


def test_top_level_inherited_sidecars_only(tmp_path):
    """Every sidecar at the dataset root; the more specific one wins even where sorted names
    put it first (acq-NM_run-1_T1w.json sorts before run-1_T1w.json)."""
    root = _dataset(tmp_path, {
        "sub-01/anat/sub-01_acq-wholebrain_T1w.nii.gz": (HEAD, None),
        "sub-01/anat/sub-01_run-2_T1w.nii.gz": (TSE_SLAB, None),
        "sub-01/anat/sub-01_acq-NM_run-1_T1w.nii.gz": (GRE_SLAB, None),
    }, top={"T1w.json": {"MagneticFieldStrength": 3, "EchoTime": 0.002},
            "acq-wholebrain_T1w.json": MPRAGE,
            "run-2_T1w.json": TSE,
            "run-1_T1w.json": {**TSE, "EchoTime": 0.01},
            "acq-NM_run-1_T1w.json": {**GRE_MT, "EchoTime": 0.004}})
    plan = _plan(root)[None]
    assert _name(plan.t1w) == "sub-01_acq-wholebrain_T1w.nii.gz"
    kinds = {_name(n.source): n for n in plan.nm}
    assert kinds["sub-01_run-2_T1w.nii.gz"].acq_type == FSE
    gre = kinds["sub-01_acq-NM_run-1_T1w.nii.gz"]
    assert gre.acq_type == GREMT
    assert gre.metadata["EchoTime"] == 0.004 and gre.metadata["ScanningSequence"] == "GR"
    assert gre.metadata["MagneticFieldStrength"] == 3  # inherited from the least specific file


def test_inheritance_from_root_down_to_the_file(tmp_path):
    """Root, subject and anat levels, nearest last; within the subject level the more specific
    file wins although its name sorts first (sub-01_acq-NM_run-1 before sub-01_run-1)."""
    root = _dataset(tmp_path, {"sub-01/anat/sub-01_acq-NM_run-1_T1w.nii.gz": (GRE_SLAB, {"FlipAngle": 40}),
                               "sub-01/anat/sub-01_T1w.nii.gz": (HEAD, MPRAGE)},
                    top={"acq-NM_T1w.json": {**GRE_MT, "FlipAngle": 10, "EchoTime": 0.003}})
    (root / "sub-01" / "sub-01_run-1_T1w.json").write_text(json.dumps({"EchoTime": 0.007, "FlipAngle": 20}))
    (root / "sub-01" / "sub-01_acq-NM_run-1_T1w.json").write_text(json.dumps({"EchoTime": 0.005}))
    nm = _plan(root)[None].nm[0]
    assert (nm.metadata["FlipAngle"], nm.metadata["EchoTime"], nm.metadata["MTState"]) == (40, 0.005, True)


def test_broken_inherited_sidecar_names_the_file(tmp_path):
    root = _dataset(tmp_path, {"sub-01/anat/sub-01_acq-NM_T1w.nii.gz": (GRE_SLAB, None),
                               "sub-01/anat/sub-01_T1w.nii.gz": (HEAD, MPRAGE)})
    (root / "acq-NM_T1w.json").write_text('{"MTState": true,')
    plan = _plan(root)[None]
    assert not plan.nm
    [item] = [i for i in plan.ignored if "not valid JSON" in i["reason"]]
    assert item["path"] == "sub-01/anat/sub-01_acq-NM_T1w.nii.gz" and "acq-NM_T1w.json" in item["reason"]
    assert item["problem"] == "error" and item["nm"]


def test_sessions_named_differently_across_visits(tmp_path):
    """ses-pre names the LC scan acq-lc_T1w beside a plain MPRAGE; ses-post names the MPRAGE
    acq-wholebrain and the LC scan plainly: both sessions get their MPRAGE and their FSE."""
    root = _dataset(tmp_path, {
        "sub-01/ses-pre/anat/sub-01_ses-pre_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/ses-pre/anat/sub-01_ses-pre_acq-lc_T1w.nii.gz": (TSE_SLAB, TSE),
        "sub-01/ses-post/anat/sub-01_ses-post_acq-wholebrain_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/ses-post/anat/sub-01_ses-post_run-2_T1w.nii.gz": (TSE_SLAB, TSE),
    })
    plans = _plan(root)
    assert _name(plans["pre"].t1w) == "sub-01_ses-pre_T1w.nii.gz"
    assert _name(plans["post"].t1w) == "sub-01_ses-post_acq-wholebrain_T1w.nii.gz"
    for ses in ("pre", "post"):
        assert [n.acq_type for n in plans[ses].nm] == [FSE], ses
        assert plans[ses].t1w_note is None  # each session uses its own T1w


def test_a_2d_spin_echo_head_image_is_not_preferred_to_the_mprage(tmp_path):
    """Two head-sized T1w images: the 3D gradient-echo/IR one wins, whatever the acq- labels say."""
    root = _dataset(tmp_path, {
        "sub-01/anat/sub-01_T1w.nii.gz": (((200, 200, 48), (1.0, 1.0, 3.0)), {**TSE, "EchoTrainLength": 5}),
        "sub-01/anat/sub-01_acq-mprage_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/anat/sub-01_acq-NM_T1w.nii.gz": (GRE_SLAB, GRE_MT),
    })
    plan = _plan(root)[None]
    assert _name(plan.t1w) == "sub-01_acq-mprage_T1w.nii.gz"
    [warning] = plan.warnings
    assert "2 T1w candidates" in warning["message"] and "sub-01_T1w.nii.gz" in warning["message"]


def test_runs_of_the_t1w_use_the_first_and_say_so(tmp_path, capfd):
    """run-01/run-02 of one MPRAGE: run-01 is used, and one warning line names the
    participant, the session and both files (here at the CLI, which stops in preflight
    because the images are all zeros)."""
    root = _dataset(tmp_path, {
        "sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/ses-1/anat/sub-01_ses-1_run-02_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/ses-1/anat/sub-01_ses-1_acq-NM_T1w.nii.gz": (GRE_SLAB, GRE_MT),
    })
    plan = _plan(root)["1"]
    assert _name(plan.t1w) == "sub-01_ses-1_run-01_T1w.nii.gz"
    [warning] = plan.warnings
    assert "the first run" in warning["message"] and "sub-01_ses-1_run-02_T1w.nii.gz" in warning["message"]
    assert any(i["path"].endswith("run-02_T1w.nii.gz") and "run-02 of the same T1w" in i["reason"]
               for i in plan.ignored)
    out = tmp_path / "out"
    code = nmbids_main([str(root), str(out), "participant", "-w", str(tmp_path / "work"),
                        "--skip-bids-validation"])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "T1w candidates" in ln]
    assert len(lines) == 1 and " WARNING: " in lines[0]
    assert lines[0].split(" WARNING: ")[1].startswith("sub-01: ses-1: sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w")
    assert code == 65  # the all-zero T1w is refused: bad data
    summary = json.loads(next((out / "sub-01" / "log").glob("*/summary.json")).read_text())
    assert [w["message"] for w in summary["warnings"]] == [lines[0].split(" WARNING: ")[1]]
    assert "T1w candidates" in (out / "sub-01.html").read_text()


def test_no_session_is_lost_in_silence(tmp_path, capfd):
    """A session whose NM cannot be processed (no usable T1w), a session without any NM image,
    and a hidden NM-looking file: each is a line naming participant, session and file, a
    summary.json entry and a report entry; the final line counts sessions and NM images; the
    exit code is not 0."""
    root = _dataset(tmp_path, {
        "sub-01/ses-a/anat/sub-01_ses-a_acq-NM_T1w.nii.gz": (GRE_SLAB, GRE_MT),
        "sub-01/ses-b/anat/sub-01_ses-b_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/ses-b/anat/.sub-01_ses-b_acq-NM_T1w.nii.gz": (GRE_SLAB, None),
        "sub-01/ses-c/anat/sub-01_ses-c_T1w.nii.gz": (HEAD, MPRAGE),
    })
    out = tmp_path / "out"
    code = nmbids_main([str(root), str(out), "participant", "-w", str(tmp_path / "work"),
                        "--skip-bids-validation"])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    # ses-a borrows ses-b's T1w, which is all zeros (refused): its NM image cannot be registered
    assert code == 65
    lines = [ln.split(": ", 1)[1] for ln in err.splitlines() if ln.startswith("nmbids ")]
    assert any(ln.startswith("sub-01: ses-a: sub-01/ses-a/anat/sub-01_ses-a_acq-NM_T1w.nii.gz: "
                             "no NM image measured in this session") for ln in lines), err
    assert any(ln.startswith("sub-01: ses-b: sub-01/ses-b/anat/.sub-01_ses-b_acq-NM_T1w.nii.gz: no NM image "
                             "measured in this session: hidden file") for ln in lines), err
    assert any(ln.startswith("sub-01: ses-c: sub-01/ses-c/anat/: no NM image found in this session (1 anat "
                             "image(s) seen)") for ln in lines), err
    # the T1w lent by ses-b to ses-a is refused once, not once per session
    assert len([ln for ln in lines if "sub-01_ses-b_T1w.nii.gz: the T1w image is empty" in ln]) == 1
    hidden = [ln for ln in lines if ".sub-01_ses-b_acq-NM_T1w.nii.gz" in ln and "rename it" in ln]
    assert len(hidden) == 1 and hidden[0].startswith("sub-01: ses-b: ") and "rename it" in hidden[0]
    assert err.strip().splitlines()[-1].startswith(
        "nmbids: 0 of 1 participant(s) processed without error; 0 of 3 session(s) and 0 of 2 NM image(s) "
        "measured (3 session(s), 2 NM image(s) skipped)")
    summary = json.loads(next((out / "sub-01" / "log").glob("*/summary.json")).read_text())
    assert any(e["session_id"] == "ses-a" and "no NM image measured in this session" in e["message"]
               for e in summary["errors"])
    assert any(e["session_id"] == "ses-c" and "no NM image found" in e["message"] for e in summary["errors"])
    assert [w["session_id"] for w in summary["warnings"]] == ["ses-b"]
    html = (out / "sub-01.html").read_text()
    assert "no NM image found in this session" in html and ".sub-01_ses-b_acq-NM_T1w.nii.gz" in html
    assert "input warning" in html


def test_dot_file_nm_is_named_in_the_no_nm_line(tmp_path, capfd):
    """The NM images of some OpenNeuro datasets are hidden (.-prefixed) or not BIDS names:
    the exit-18 line says where they are and how to name them, and counts every anat image."""
    root = _dataset(tmp_path, {
        "sub-01/anat/sub-01_T1w.nii.gz": (HEAD, MPRAGE),
        "sub-01/anat/.sub-01_acq-NM_T1w.nii.gz": (GRE_SLAB, None),
        "sub-01/anat/sub-01_NM-MRI.nii.gz": (GRE_SLAB, None),
    })
    code = nmbids_main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                        "--skip-bids-validation"])
    err = capfd.readouterr().err
    assert code == 18
    [line] = [ln for ln in err.splitlines() if "no NM images found" in ln]
    assert "(3 anat image(s) seen)" in line
    assert "sub-01/anat/.sub-01_acq-NM_T1w.nii.gz" in line and "sub-01/anat/sub-01_NM-MRI.nii.gz" in line
    assert "2 file(s) look like NM but were not used (1 hidden)" in line
    assert NM_NAMING_HINT in line
    assert "Traceback" not in err


@pytest.mark.parametrize("name, looks", [(".sub-01_acq-NM_T1w.nii.gz", True), (".sub-01_T1w.nii.gz", False),
                                         ("sub-01_neuromelanin.nii", True), ("sub-01_acq-mprage_T1w.nii.gz", False)])
def test_name_hint(name, looks):
    from nmbids.acquisitions import name_looks_like_nm

    assert name_looks_like_nm(name) is looks
