"""Discovery and classification: sidecars in the three vendors' styles, real BIDS layouts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nmbids.acquisitions import FSE, GREMT, MTR, classify, looks_like_nm
from nmbids.bids import load_layout, plan_participant
from nmbids.cli import main as nmbids_main

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = SHARED / "data" / "bids-examples"


@pytest.mark.parametrize("meta, entities, expected", [
    # Siemens
    ({"ScanningSequence": "GR", "SequenceName": "*fl3d1", "MTState": True}, {"acquisition": "NM"}, GREMT),
    ({"ScanningSequence": "SE", "SequenceName": "*tse2d1_3", "EchoTrainLength": 3}, {"acquisition": "LC"}, FSE),
    # GE
    ({"ScanningSequence": "GR", "PulseSequenceType": "GRE", "SequenceName": "fgre"}, {"acquisition": "NM"}, GREMT),
    ({"ScanningSequence": "SE", "SequenceName": "FSE", "EchoTrainLength": 4}, {"acquisition": "NM"}, FSE),
    # Philips
    ({"ScanningSequence": "GR", "SequenceName": "T1FFE"}, {"acquisition": "neuromelanin"}, GREMT),
    ({"ScanningSequence": "SE", "SequenceName": "TSE"}, {"acquisition": "neuromelanin"}, FSE),
    # no metadata: the acq- label decides
    ({}, {"acquisition": "FSE"}, FSE),
    ({}, {"acquisition": "neuromelaninMTw"}, GREMT),
    # MT pairs
    ({"MTState": True}, {"mt": "on"}, MTR),
    # unknown
    ({}, {"acquisition": "mprage"}, None),
    ({"ScanningSequence": "EP", "SequenceName": "*epfid2d1_64"}, {"acquisition": "NM"}, None),
])
def test_classify_vendor_styles(meta, entities, expected):
    kind, evidence = classify(entities, meta)
    assert kind == expected
    if expected is not None and meta:
        assert evidence


def test_nm_never_taken_as_t1w(tmp_path):
    root = tmp_path / "ds"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    for name in ("sub-01_acq-NM_T1w", "sub-01_acq-mprage_T1w", "sub-01_acq-neuromelanin_T2starw"):
        (anat / f"{name}.nii.gz").write_bytes(b"")
        (anat / f"{name}.json").write_text(json.dumps({"MTState": "NM" in name or "neuro" in name}))
    plan = plan_participant(load_layout(root), root, "01")[0]
    assert plan.t1w.endswith("sub-01_acq-mprage_T1w.nii.gz")
    assert sorted(Path(n.source).name for n in plan.nm) == ["sub-01_acq-NM_T1w.nii.gz",
                                                            "sub-01_acq-neuromelanin_T2starw.nii.gz"]
    assert looks_like_nm({"acquisition": "NM", "suffix": "T1w"}, {})


def test_broken_sidecar_is_reported_not_fatal(tmp_path):
    root = tmp_path / "ds"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    (anat / "sub-01_acq-NM_T1w.nii.gz").write_bytes(b"")
    (anat / "sub-01_acq-NM_T1w.json").write_text("{not json")
    plan = plan_participant(load_layout(root), root, "01")[0]
    assert not plan.nm
    assert any("not valid JSON" in i["reason"] for i in plan.ignored)


@pytest.mark.skipif(not EXAMPLES.exists(), reason="../shared/data/bids-examples not available")
@pytest.mark.parametrize("dataset", ["qmri_mpm", "qmri_mtsat"])
def test_real_mt_layouts_are_discovered_and_refused_clearly(dataset, tmp_path, capfd):
    root = EXAMPLES / dataset
    plan = plan_participant(load_layout(root), root, "01")[0]
    assert plan.nm and all(n.acq_type == MTR and n.mt_off for n in plan.nm)
    code = nmbids_main([str(root), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                        "-w", str(tmp_path / "work")])
    err = capfd.readouterr().err
    assert code in (65, 66)
    assert "Traceback" not in err
    assert "sub-01" in err


@pytest.mark.skipif(not EXAMPLES.exists(), reason="../shared/data/bids-examples not available")
def test_dataset_without_nm_exits_18(tmp_path, capfd):
    code = nmbids_main([str(EXAMPLES / "ds001"), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                        "-w", str(tmp_path / "work"), "--participant-label", "01", "02"])
    assert code == 18
    assert "no NM images" in capfd.readouterr().err


def test_usage_errors(tmp_path):
    (tmp_path / "dataset_description.json").write_text("{}")
    assert nmbids_main([str(tmp_path), str(tmp_path), "participant"]) == 64
    assert nmbids_main([str(tmp_path), str(tmp_path / "o"), "everything"]) == 17
    with pytest.raises(SystemExit) as exc:
        nmbids_main([str(tmp_path), str(tmp_path / "o"), "participant", "--ref-stat", "max"])
    assert exc.value.code == 64


@pytest.mark.skipif(not EXAMPLES.exists(), reason="../shared/data/bids-examples not available")
def test_invalid_dataset_exits_16(tmp_path, capfd):
    import shutil as sh
    import sys

    if not (Path(sys.executable).parent / "bids-validator-deno").exists() and not sh.which("bids-validator-deno"):
        pytest.skip("bids-validator-deno not installed")
    code = nmbids_main([str(EXAMPLES / "qmri_mtsat"), str(tmp_path / "out"), "participant",
                        "-w", str(tmp_path / "work")])
    assert code == 16
    assert "failed BIDS validation" in capfd.readouterr().err


def test_anat_layout_finds_what_pybids_finds(tmp_path):
    """The direct walk gives the same subjects, sessions, anat images and entities as a pybids
    layout (validation off), on a tree with sessions, runs, MT pairs, other modalities, hidden
    files and a session without anat."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    from nmbids.bids import AnatLayout

    root = tmp_path / "ds"
    (root / "derivatives" / "sub-09" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    names = ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_acq-NM_run-1_T1w.nii.gz",
             "sub-01/ses-1/anat/sub-01_ses-1_acq-NM_run-02_T1w.nii", "sub-01/ses-2/anat/sub-01_ses-2_mt-on_MTR.nii.gz",
             "sub-01/ses-2/anat/sub-01_ses-2_mt-off_MTR.nii.gz", "sub-01/ses-3/sub-01_ses-3_scans.tsv",
             "sub-02/anat/sub-02_acq-FSE_echo-1_part-mag_T2w.nii.gz", "sub-02/anat/sub-02_T1w.json",
             "sub-02/anat/.sub-02_T1w.nii.gz", "sub-02/func/sub-02_task-rest_bold.nii.gz",
             "sub-03/func/sub-03_task-rest_bold.nii.gz", "sub-10/anat/sub-10_rec-norm_T1w.nii.gz",
             "derivatives/sub-09/anat/sub-09_T1w.nii.gz"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    ignore = [re.compile(r"^/(code|derivatives|sourcedata|stimuli|models)/"),
              re.compile(r"/(func|dwi|fmap|perf|beh|eeg|meg|ieeg|pet|micr|nirs|motion)/"), re.compile(r"(^|/)\.")]
    theirs = BIDSLayout(str(root), validate=False,
                        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore))
    mine = AnatLayout(root)
    assert mine.get_subjects() == theirs.get_subjects() == ["01", "02", "10"]
    for sub in theirs.get_subjects():
        assert mine.get_sessions(subject=sub) == theirs.get_sessions(subject=sub)
        for ses in theirs.get_sessions(subject=sub) or [None]:
            query = dict(subject=sub, datatype="anat", extension=[".nii", ".nii.gz"])
            if ses:
                query["session"] = ses
            want = {f.path: {k: str(v) for k, v in f.get_entities().items()} for f in theirs.get(**query)}
            got = {f.path: {k: str(v) for k, v in f.get_entities().items()} for f in mine.get(sub, ses)}
            assert got == want, (sub, ses)
