"""``--atlas cit168`` (issue 18, deliverable 6): SN and VTA from CIT168, the rest built in.

The real CIT168 files cannot be fetched here, so the tests write synthetic ones laid out as
nilearn's ``fetch_atlas_pauli_2017`` stores them (``<data dir>/pauli_2017/pauli_2017_prob.nii.gz``,
16 volumes, and ``labels.txt``): a coarse (2 mm) MNI grid whose SNc, VTA and PBP volumes are
blobs at the built-in atlas's SN and VTA positions, an SNr blob on top of the SNc one (which
must not count), and the other volumes empty.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from nmbids import cit168_atlas as cit
from nmbids.atlas import ATLAS_COLUMN, REQUIRED_COLUMNS, atlas_choice, prepare_atlas
from nmbids.builtin_atlas import build_atlas
from nmbids.cli import main as nmbids_main
from nmbids.contract import names
from nmbids.contract.exits import EXIT_OK, EXIT_USAGE
from nmbids.parser import build_parser
from nmbids.reports.citation import methods_boilerplate
from nmbids.templates import get_template

GRID_MM = 2.0
ORIGIN = np.array([-40.0, -60.0, -50.0])
SHAPE = (41, 41, 36)
SN_C, SN_SD = (10.0, -19.0, -14.0), 3.5  # p >= 0.5 within about 4 mm
VTA_C, VTA_SD = (4.0, -19.0, -16.0), 2.0
PBP_C, PBP_SD = (5.0, -13.0, -9.0), 2.0  # apart from the rest: what lands there is PBP's alone


def _blob(centre, sd, peak=0.95):
    ijk = np.indices(SHAPE).reshape(3, -1).T
    xyz = ORIGIN + GRID_MM * ijk
    d2 = ((xyz - np.asarray(centre)) ** 2).sum(1)
    return (peak * np.exp(-d2 / (2 * sd ** 2))).reshape(SHAPE).astype(np.float32)


def write_cit168(root: Path, *, labels=cit.LABELS, volumes=None) -> Path:
    """A synthetic CIT168 in nilearn's layout under ``root`` (a nilearn data dir); returns root."""
    folder = root / cit.DATASET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    data = np.zeros(SHAPE + (len(cit.LABELS),), np.float32)
    both = lambda c, sd: np.maximum(_blob(c, sd), _blob((-c[0], c[1], c[2]), sd))  # noqa: E731
    data[..., cit.LABELS.index("SNc")] = both(SN_C, SN_SD)
    data[..., cit.LABELS.index("SNr")] = both(SN_C, SN_SD)  # SNr is not SN for NM-MRI
    data[..., cit.LABELS.index("VTA")] = both(VTA_C, VTA_SD)
    data[..., cit.LABELS.index("PBP")] = both(PBP_C, PBP_SD)
    for k, vol in (volumes or {}).items():
        data[..., k] = vol
    affine = np.diag([GRID_MM] * 3 + [1.0])
    affine[:3, 3] = ORIGIN
    nb.save(nb.Nifti1Image(data, affine), str(folder / cit.PROB_FILE))
    (folder / cit.LABELS_FILE).write_text("".join(f"{i} {name}\n" for i, name in enumerate(labels)))
    return root


@pytest.fixture(scope="module")
def template():
    return get_template()


@pytest.fixture(scope="module")
def built(tmp_path_factory, template):
    """The atlas prepare_atlas writes for --atlas cit168 from the synthetic files."""
    tmp = tmp_path_factory.mktemp("cit168")
    data = write_cit168(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cit.ENV_DIR, str(data))
        nii, tsv = prepare_atlas(tmp / "out", template, "cit168")
    img = nb.load(str(nii))
    table = pd.read_csv(tsv, sep="\t")
    side = json.loads(names.atlas_sidecar(tmp / "out", template.name).read_text())
    return dict(img=img, labels=np.asarray(img.dataobj).astype(int), table=table, sidecar=side, data=data,
                index={r.name: r.index for r in table.itertuples()})


def _world(img, mask):
    ijk = np.argwhere(mask).T
    return (img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]).T


# ---- locating the files --------------------------------------------------------------------------

def test_files_found_where_nilearn_puts_them(tmp_path):
    data = write_cit168(tmp_path / "nilearn_data")
    found = cit.find_files({cit.ENV_DIR: str(data)})
    assert found == cit.CIT168Files(data / "pauli_2017" / "pauli_2017_prob.nii.gz",
                                    data / "pauli_2017" / "labels.txt")
    # the variable may also name the dataset folder itself
    assert cit.find_files({cit.ENV_DIR: str(data / "pauli_2017")}) == found
    # without it: nilearn's own data folders, in nilearn's order
    assert cit.find_files({"NILEARN_DATA": str(data)}) == found
    assert cit.find_files({cit.ENV_DIR: str(tmp_path / "elsewhere"), "NILEARN_DATA": str(data)}) is None


def test_search_order_is_nilearns(tmp_path, monkeypatch):
    from nilearn.datasets import get_data_dirs

    env = {"NILEARN_SHARED_DATA": str(tmp_path / "shared"), "NILEARN_DATA": f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(cit.ENV_DIR, raising=False)
    assert cit.search_dirs() == [Path(d) / "pauli_2017" for d in get_data_dirs()]


def test_labels_read_as_nilearn_reads_them(tmp_path):
    write_cit168(tmp_path)
    path = tmp_path / "pauli_2017" / "labels.txt"
    assert cit.read_labels(path) == list(cit.LABELS)
    assert list(np.loadtxt(path, dtype=str)[:, 1]) == list(cit.LABELS)  # nilearn's own reading


# ---- the atlas built -----------------------------------------------------------------------------

def test_rois_on_the_template_grid(built, template):
    tpl = nb.load(str(template.t1w))
    assert built["img"].shape == tpl.shape[:3]
    assert np.allclose(built["img"].affine, tpl.affine)
    for name in ("SN_L", "SN_R", "VTA_L", "VTA_R"):
        assert (built["labels"] == built["index"][name]).sum() > 0, name
    # SN: where the SNc blob is at least 0.5 (radius 1.18 sd), not the built-in ellipsoid
    sn = _world(built["img"], built["labels"] == built["index"]["SN_R"])
    d = np.linalg.norm(sn - np.array(SN_C), axis=1)
    assert d.max() <= 1.18 * SN_SD + 1.0
    vol = len(sn) * abs(np.linalg.det(built["img"].affine[:3, :3]))
    assert 4 / 3 * np.pi * (1.18 * SN_SD - 1.6) ** 3 < vol < 4 / 3 * np.pi * (1.18 * SN_SD + 0.5) ** 3


def test_left_and_right_split_by_world_x(built):
    img, labels, idx = built["img"], built["labels"], built["index"]
    for roi in ("SN", "VTA"):
        assert (_world(img, labels == idx[f"{roi}_L"])[:, 0] < 0).all()
        assert (_world(img, labels == idx[f"{roi}_R"])[:, 0] > 0).all()
    # the midsagittal plane belongs to neither side
    xyz = _world(img, np.isin(labels, [idx[n] for n in ("SN_L", "SN_R", "VTA_L", "VTA_R")]))
    assert not (np.abs(xyz[:, 0]) < 1e-6).any()


def test_midline_blob_split_at_x0(tmp_path, template):
    """A VTA blob straddling the midline is split by the sign of x, x = 0 left out."""
    data = write_cit168(tmp_path / "d", volumes={cit.LABELS.index("VTA"): _blob((0.0, -19.0, -16.0), 2.5)})
    labels, affine, table, _ = cit.build_cit168_atlas(template, cit.find_files({cit.ENV_DIR: str(data)}))
    idx = {r.name: r.index for r in table.itertuples()}
    img = nb.Nifti1Image(labels, affine)
    left, right = _world(img, labels == idx["VTA_L"]), _world(img, labels == idx["VTA_R"])
    assert len(left) > 0 and len(right) > 0
    assert (left[:, 0] < 0).all() and (right[:, 0] > 0).all()
    assert abs(len(left) - len(right)) <= 0.1 * len(left)  # a symmetric blob: halves of one size


def test_lc_and_references_are_the_builtin_ones(built, template):
    ref, _, ref_table = build_atlas(template)
    labels = built["labels"]
    for r in ref_table.itertuples():
        if r.roi in ("LC", "CC", "PT"):
            assert np.array_equal(labels == r.index, ref == r.index), r.name
        else:  # SN and VTA are CIT168's, not the built-in ellipsoids
            assert not np.array_equal(labels == r.index, ref == r.index), r.name
    assert (built["table"][["index", "name", "roi", "hemi", "kind"]].values == ref_table.values).all()


def test_table_and_sidecar_say_which_atlas_made_each_roi(built):
    table, side = built["table"], built["sidecar"]
    assert list(table.columns) == [*REQUIRED_COLUMNS, ATLAS_COLUMN]
    assert len(table) == 9 and table["index"].tolist() == list(range(1, 10))
    assert table.set_index("name")[ATLAS_COLUMN].to_dict() == {
        "SN_L": "cit168", "SN_R": "cit168", "VTA_L": "cit168", "VTA_R": "cit168", "LC_L": "builtin",
        "LC_R": "builtin", "CC_L": "builtin", "CC_R": "builtin", "PT": "builtin"}
    assert side["Atlas"] == "cit168"
    assert side["Sources"][0].endswith("pauli_2017/pauli_2017_prob.nii.gz")
    assert side["CIT168"]["Threshold"] == 0.5 and side["CIT168"]["Composition"] == {"SN": ["SNc"], "VTA": ["VTA", "PBP"]}
    assert "Sci Data. 2018;5:180063" in side["CIT168"]["Citation"]
    assert set(side["Regions"]) == set(table["name"])
    assert side["Regions"]["SN_L"]["Atlas"] == "cit168" and side["Regions"]["SN_L"]["Voxels"] > 0
    assert side["Regions"]["PT"]["Atlas"] == "builtin"


def test_vta_takes_the_pbp_and_sn_not_the_snr(built, tmp_path, template):
    img, labels, idx = built["img"], built["labels"], built["index"]
    pbp = np.array(PBP_C)
    vta = _world(img, labels == idx["VTA_R"])
    assert (np.linalg.norm(vta - pbp, axis=1) < 2.5).sum() > 10  # the PBP blob is VTA
    # an SNr far from the SNc adds nothing to SN
    far = {cit.LABELS.index("SNr"): _blob((10.0, -40.0, -30.0), 3.5)}
    data = write_cit168(tmp_path / "snr", volumes=far)
    labels2, *_ = cit.build_cit168_atlas(template, cit.find_files({cit.ENV_DIR: str(data)}))
    assert np.array_equal(labels2, labels)


def test_overlaps_go_to_the_larger_probability():
    index = {("SN", "L"): 1, ("SN", "R"): 2, ("VTA", "L"): 3, ("VTA", "R"): 4}
    sn = np.array([0.6, 0.8, 0.6, 0.4, 0.7, 0.9, 0.55])
    vta = np.array([0.7, 0.55, 0.6, 0.45, 0.2, 0.9, 0.0])
    x = np.array([5.0, 5.0, -5.0, 5.0, 0.0, -3.0, 2.0])
    got = cit.assign_regions({"SN": sn, "VTA": vta}, x, index)
    # VTA larger; SN larger; a tie goes to SN; neither reaches 0.5; on the midline; left; right
    assert got.tolist() == [4, 2, 1, 0, 0, 1, 2]


def test_overlap_in_the_built_atlas(tmp_path, template):
    """Where the SNc and VTA maps both pass 0.5 the voxel goes to the larger one."""
    vta = _blob((10.0, -19.0, -14.0), 3.5, peak=0.99)  # VTA on the SN, a little higher everywhere
    data = write_cit168(tmp_path / "d", volumes={cit.LABELS.index("VTA"): np.maximum(vta, vta[::-1])})
    labels, _, table, side = cit.build_cit168_atlas(template, cit.find_files({cit.ENV_DIR: str(data)}))
    idx = {r.name: r.index for r in table.itertuples()}
    assert (labels == idx["SN_R"]).sum() == 0 and (labels == idx["VTA_R"]).sum() > 100
    assert side["Regions"]["SN_R"]["Voxels"] == 0


# ---- when the files are missing or wrong ---------------------------------------------------------

def _one_line(capfd):
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return err, lines


def test_missing_files_one_line_and_exit_64(tmp_path, monkeypatch, capfd):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    for name in ("sub-01_T1w.nii.gz", "sub-01_acq-NM_T1w.nii.gz"):  # a dry run opens no image
        nb.save(nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(bids / "sub-01" / "anat" / name))
    missing = tmp_path / "no-cit168"
    monkeypatch.setenv(cit.ENV_DIR, str(missing))
    code = nmbids_main([str(bids), str(tmp_path / "out"), "participant", "--atlas", "cit168",
                        "-w", str(tmp_path / "work"), "--skip-bids-validation"])
    err, lines = _one_line(capfd)
    assert code == EXIT_USAGE == 64
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert str(missing / "pauli_2017") in lines[0] and "WITH_CIT168=1" in lines[0]
    assert "fetch_atlas_pauli_2017" in lines[0]
    assert not (tmp_path / "out" / "atlas").exists()  # refused before any work
    # the dry run reports the same problem, after what it found
    code = nmbids_main([str(bids), str(tmp_path / "out2"), "participant", "--atlas", "cit168", "--dry-run"])
    err, lines = _one_line(capfd)
    assert code == EXIT_USAGE
    assert any(str(missing / "pauli_2017") in ln and "WITH_CIT168=1" in ln for ln in lines), err
    assert "Traceback" not in err


def test_not_a_probability_atlas_is_refused(tmp_path, template):
    data = write_cit168(tmp_path / "d", volumes={cit.LABELS.index("SNc"): np.full(SHAPE, 3.0, np.float32)})
    with pytest.raises(cit.NmbidsError) as exc:
        cit.build_cit168_atlas(template, cit.find_files({cit.ENV_DIR: str(data)}))
    assert exc.value.code == EXIT_USAGE and "outside 0-1" in str(exc.value)
    data = write_cit168(tmp_path / "e", labels=[f"label_{i}" for i in range(16)])
    with pytest.raises(cit.NmbidsError) as exc:
        cit.build_cit168_atlas(template, cit.find_files({cit.ENV_DIR: str(data)}))
    assert "SNc" in str(exc.value)


# ---- the command line and the methods text -------------------------------------------------------

def test_atlas_option_takes_keywords_and_paths():
    parse = lambda *a: build_parser().parse_args(["b", "o", "participant", *a]).atlas  # noqa: E731
    assert parse() is None
    assert parse("--atlas", "cit168") == "cit168" and parse("--atlas", "CIT168") == "cit168"
    assert parse("--atlas", "builtin") == "builtin"
    assert parse("--atlas", "./cit168") == Path("./cit168")
    assert atlas_choice("my_dseg.nii.gz") == Path("my_dseg.nii.gz")


def test_boilerplate_cites_pauli_only_with_cit168():
    with_cit = methods_boilerplate("MNI152NLin2009cAsym", "0.1.0", "cit168")
    text = "\n".join(with_cit.paragraphs)
    assert "CIT168" in text and "pars compacta" in text and "parabrachial pigmented" in text
    assert any("Pauli WM" in r and "2018;5:180063" in r for r in with_cit.references)
    builtin = methods_boilerplate("MNI152NLin2009cAsym", "0.1.0", "builtin")
    assert not any("Pauli" in r for r in builtin.references)
    assert "built-in search regions" in "\n".join(builtin.paragraphs)


def test_builtin_atlas_is_rebuilt_after_a_cit168_run(built, tmp_path, template, monkeypatch):
    """A builtin run into an output folder that holds a CIT168 atlas does not reuse it."""
    out = tmp_path / "out"
    monkeypatch.setenv(cit.ENV_DIR, str(built["data"]))
    prepare_atlas(out, template, "cit168")
    monkeypatch.delenv(cit.ENV_DIR)
    nii, tsv = prepare_atlas(out, template, None)
    assert set(pd.read_csv(tsv, sep="\t")[ATLAS_COLUMN]) == {"builtin"}
    assert json.loads(names.atlas_sidecar(out, template.name).read_text())["Atlas"] == "builtin"
    assert np.array_equal(np.asarray(nb.load(str(nii)).dataobj), build_atlas(template)[0])


def test_validation_skips_cit168_without_its_files(tmp_path, monkeypatch, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import validate_snr

    monkeypatch.setenv(cit.ENV_DIR, str(tmp_path / "none"))
    assert validate_snr.main(["--atlas", "cit168", "--out", str(tmp_path / "v"), "--docs", str(tmp_path / "docs")]) == 0
    out = capsys.readouterr()
    assert "--atlas cit168 skipped: CIT168 files not found" in out.out + out.err
    assert str(tmp_path / "none" / "pauli_2017") in out.out + out.err
    assert not (tmp_path / "docs").exists() and not list(tmp_path.glob("v*"))


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_participant_level_with_cit168(tmp_path, monkeypatch):
    from nmbids import phantom as sim

    sim.simulate_dataset(tmp_path, n_subjects=1, seed=3, t1w_res=1.5, nm_fov=(110.0, 120.0), repeats=2)
    monkeypatch.setenv(cit.ENV_DIR, str(write_cit168(tmp_path / "cit168")))
    out = tmp_path / "out"
    code = nmbids_main([str(tmp_path / "bids"), str(out), "participant", "-w", str(tmp_path / "work"),
                        "--nprocs", "2", "--registration-quality", "fast", "--skip-bids-validation",
                        "--atlas", "cit168"])
    assert code == EXIT_OK
    m = pd.read_csv(out / "sub-01" / "anat" / "sub-01_desc-nm_measures.tsv", sep="\t",
                    na_values={"value": ["n/a"]}, keep_default_na=False)
    sn = m[(m["roi"] == "SN") & (m["measure"] == "cr")].set_index("hemi")["value"]
    assert sn[["L", "R"]].notna().all() and (sn[["L", "R"]] > 0).all(), sn
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "CIT168" in citation and "Pauli WM" in citation
    report = (out / "sub-01.html").read_text()
    assert "CIT168" in report and "Pauli WM" in report
    summary = json.loads(next((out / "sub-01" / "log").glob("*/summary.json")).read_text())
    assert summary["atlas"]["name"] == "cit168"
    table = pd.read_csv(next((out / "atlas").glob("*.tsv")), sep="\t")
    assert set(table.loc[table["roi"].isin(["SN", "VTA"]), ATLAS_COLUMN]) == {"cit168"}
