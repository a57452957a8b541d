"""Names a dataset or a user may give: they never reach a shell and never write outside the
output and work directories. (Report escaping: tests/test_reports.py; no network:
tests/test_faults.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from nmbids.bids import load_layout, plan_participant
from nmbids.cli import main as nmbids_main

# file-name parts a dataset could carry; "$(touch canary)" would create a file if a shell saw it
HOSTILE = ["NM;touch canary", "NM$(touch canary)", "NMé", "NM dup", "..NM", "NM`touch canary`"]


def _image(path: Path, value: float = 1.0, n: int = 8, mm: float = 2.0) -> None:
    data = np.full((n, n, n), value, dtype=np.float32)
    data[2:6, 2:6, 2:6] += 5
    nb.save(nb.Nifti1Image(data, np.diag([mm, mm, mm, 1.0])), str(path))


@pytest.fixture()
def hostile_dataset(tmp_path):
    root = tmp_path / "ds"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    _image(anat / "sub-01_T1w.nii.gz", n=50, mm=3.0)  # head-sized: a slab is never the T1w
    for i, part in enumerate(HOSTILE):
        _image(anat / f"sub-01_acq-{part}_T1w.nii.gz", i + 2)
        (anat / f"sub-01_acq-{part}_T1w.json").write_text(json.dumps({"MTState": True}))
    # folders that pybids would read as sub-01 or as sub-a
    for folder in ("sub-01;touch canary", "sub-a b", "sub-..", "sub-ü"):
        d = root / folder / "anat"
        d.mkdir(parents=True)
        _image(d / f"{folder}_acq-NM_T1w.nii.gz")
    return root


def test_hostile_file_names_are_not_merged_into_real_acquisitions(hostile_dataset):
    root = hostile_dataset
    plan = plan_participant(load_layout(root), root, "01")[0]
    assert plan.t1w.endswith("sub-01/anat/sub-01_T1w.nii.gz")
    assert plan.nm == []  # before: all six were averaged as repeats of "acq-NM" (pybids reads "NM")
    bad = {i["path"] for i in plan.ignored if i["reason"].startswith("not a valid BIDS file name")}
    # "acq-..NM" is not read as an image name at all; every other hostile name is listed as refused
    assert {f"sub-01/anat/sub-01_acq-{p}_T1w.nii.gz" for p in HOSTILE if p != "..NM"} <= bad
    # the folder "sub-01;touch canary" is not sub-01's: discovery does not even walk it
    seen = {i["path"] for i in plan.ignored} | {n.source for n in plan.nm} | {plan.t1w}
    assert not any("canary/" in str(p) for p in seen)


def test_hostile_names_never_reach_a_shell_nor_escape(hostile_dataset, tmp_path, capfd, monkeypatch):
    root = hostile_dataset
    monkeypatch.chdir(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    code = nmbids_main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                        "--skip-bids-validation"])
    err = capfd.readouterr().err
    assert code == 18  # none of these is a usable NM image
    assert "no NM images" in err and "Traceback" not in err
    assert not [p for p in Path("/").glob("canary")] and not list(tmp_path.rglob("canary"))
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path / "out") or p.is_relative_to(tmp_path / "work") for p in new), \
        sorted(map(str, new))


def test_a_real_nm_image_beside_hostile_names_is_used_alone(hostile_dataset):
    root = hostile_dataset
    _image(root / "sub-01" / "anat" / "sub-01_acq-NM_T1w.nii.gz", 3)
    (root / "sub-01" / "anat" / "sub-01_acq-NM_T1w.json").write_text(json.dumps({"MTState": True}))
    plan = plan_participant(load_layout(root, ["01"]), root, "01")[0]
    assert [n.source for n in plan.nm] == ["sub-01/anat/sub-01_acq-NM_T1w.nii.gz"]
    assert plan.nm[0].files == [str(root / "sub-01" / "anat" / "sub-01_acq-NM_T1w.nii.gz")]


@pytest.mark.parametrize("label", ["../x", "01;touch canary", "$(id)", "ü", "a b", "..", "01/../../x"])
@pytest.mark.parametrize("option", ["--participant-label", "--session-label"])
def test_hostile_labels_are_refused(hostile_dataset, tmp_path, capfd, label, option):
    code = nmbids_main([str(hostile_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                        "--skip-bids-validation", option, label])
    err = capfd.readouterr().err
    assert code == 64
    assert len(err.strip().splitlines()) == 1 and "invalid" in err and "letters and digits" in err
    assert not list(tmp_path.rglob("canary"))
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    assert not [p for p in (tmp_path / "out").rglob("sub-*")]


def test_no_subprocess_gets_a_shell():
    """Every subprocess call in nmbids passes an argument list, never shell=True or os.system."""
    src = Path(__file__).resolve().parents[1] / "nmbids"
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert "shell=True" not in text, f
        assert "os.system(" not in text and "os.popen(" not in text, f
