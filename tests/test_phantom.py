"""Tests of the digital phantom (nmbids.phantom), kept small: coarse grids, few subjects."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from nmbids import phantom as sim
from nmbids.phantom.cli import main
from nmbids.phantom.nuclei import read_label_table

SHARED = Path(__file__).resolve().parents[2] / "shared"
AAL3 = SHARED / "data" / "atlases" / "AAL3" / "tpl-MNI152NLin6Asym_res-01_atlas-AAL3_dseg.nii.gz"

# Coarse, fast settings: every test dataset is a few hundred thousand voxels.
FAST = dict(t1w_res=3.0, nm_inplane=2.0, nm_fov=(90.0, 100.0), repeats=2)
# Fine in-plane voxels over a small field of view around the brainstem, for contrast checks.
FINE = dict(t1w_res=3.0, nm_inplane=0.8, nm_fov=(60.0, 70.0), repeats=1)


def _validator() -> str | None:
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        cand = Path(sys.executable).with_name("bids-validator-deno")
        exe = str(cand) if cand.exists() else None
    return exe


def _load(root: Path, rel: str) -> nb.Nifti1Image:
    return nb.load(str(root / rel))


def _all_acqs(truth):
    for sub, s in truth["subjects"].items():
        for ses, se in s["sessions"].items():
            for a in se["acquisitions"]:
                yield sub, ses, a


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """4 subjects, two groups and sites, all acquisition types, naming variants."""
    out = tmp_path_factory.mktemp("cohort")
    sim.simulate_dataset(out, n_subjects=4, seed=11, acq="gremt,fse,mtr",
                         groups="control,patient", effects=["SN:cr:0.05"], sites=2,
                         naming_variants=True, **FAST)
    return out


@pytest.fixture(scope="module")
def cohort_truth(cohort):
    return json.loads((cohort / "truth.json").read_text())


@pytest.fixture(scope="module")
def noise_free(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("noisefree")
    sim.simulate_dataset(out, n_subjects=1, seed=5, acq="gremt,fse,mtr", noise_free=True, **FINE)
    return out


# --------------------------------------------------------------------------- geometry of nuclei

def _in_search_region(name: str, p: np.ndarray) -> np.ndarray:
    """The pipeline's generous search ellipsoids (template mm)."""
    roi, hemi = name.split("_")
    sx = -1.0 if hemi == "L" else 1.0
    if roi == "SN":
        c = np.array([10 * sx, -19.0, -13.0])
        u = np.array([-8 * sx, -12.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.array([-u[1], u[0], 0.0])
        d = p - c[:, None]
        return (u @ d / 9) ** 2 + (v @ d / 4) ** 2 + (d[2] / 6) ** 2 <= 1
    c, r = {"VTA": ((4 * sx, -17, -14), (3.5, 4.5, 5)), "LC": ((5 * sx, -36, -25), (3, 3, 10))}[roi]
    return ((((p - np.array(c, float)[:, None]) / np.array(r, float)[:, None]) ** 2).sum(0)) <= 1


def test_builtin_nuclei_volumes_and_search_regions():
    nuc = sim.BuiltinNuclei()
    expected = {"SN": (250, 300), "VTA": (60, 80), "LC": (40, 60)}
    for name in sim.NUCLEI:
        pts, dv = nuc.points(name)
        vol = pts.shape[1] * dv
        lo, hi = expected[name.split("_")[0]]
        assert lo <= vol <= hi, (name, vol)
        assert _in_search_region(name, pts).all(), name
        # the side is right: L at x < 0
        assert (pts[0] < 0).all() == name.endswith("_L")
    # nuclei do not overlap: every labelled point has one label only
    g = np.stack(np.meshgrid(np.arange(-16, 16, 0.5), np.arange(-42, -8, 0.5),
                             np.arange(-36, -4, 0.5), indexing="ij")).reshape(3, -1)
    hits = sum(nuc.shapes[n].contains(g).astype(int) for n in sim.NUCLEI)
    assert hits.max() == 1


def test_lc_is_a_thin_column():
    lc = sim.BuiltinNuclei().shapes["LC_R"]
    assert 1.5 <= 2 * lc.radius <= 2.5
    assert 12 <= np.linalg.norm(np.subtract(lc.p1, lc.p0)) <= 16


# --------------------------------------------------------------------------- determinism

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_true_bias_field_is_the_one_in_the_image(tmp_path):
    # high SNR, strong field: repeat 1 divided by the recorded field gives the reference
    # tissues their bias-free values; undivided they are off by the field
    sim.simulate_dataset(tmp_path, n_subjects=1, seed=3, acq="gremt", snr=400.0, bias=0.6, **FAST)
    (_, _, a), = _all_acqs(json.loads((tmp_path / "truth.json").read_text()))
    img = np.asarray(_load(tmp_path / "bids", a["source"]).dataobj, dtype=float)
    img = img[..., 0] if img.ndim == 4 else img
    field = np.asarray(_load(tmp_path, a["truth_biasfield"]).dataobj)
    dseg = np.asarray(_load(tmp_path, a["truth_dseg"]).dataobj)
    assert field.shape == img.shape and np.ptp(field) > 0.1
    for tissue, labels in (("CC", (7, 8)), ("PT", (9,))):
        ref = np.isin(dseg, labels)
        assert np.median(img[ref] / field[ref]) == pytest.approx(a["reference_value"][tissue], rel=0.01)
        assert np.median(field[ref]) != pytest.approx(1.0, abs=0.01)


def test_deterministic_same_seed_different_other_seed(tmp_path):
    kw = dict(n_subjects=1, acq="gremt", **FAST)
    a = sim.simulate_dataset(tmp_path / "a", seed=3, **kw)
    b = sim.simulate_dataset(tmp_path / "b", seed=3, **kw)
    c = sim.simulate_dataset(tmp_path / "c", seed=4, **kw)
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert ta.keys() == tb.keys() and ta == tb
    nm = "bids/sub-01/anat/sub-01_acq-NM_run-1_T1w.nii.gz"
    assert ta.keys() == tc.keys()
    assert ta[nm] != tc[nm]
    assert ta["truth.json"] != tc["truth.json"]


def test_existing_output_needs_overwrite(tmp_path):
    kw = dict(n_subjects=1, seed=1, acq="gremt", **FAST)
    sim.simulate_dataset(tmp_path, **kw)
    with pytest.raises(FileExistsError):
        sim.simulate_dataset(tmp_path, **kw)
    sim.simulate_dataset(tmp_path, overwrite=True, **kw)


# --------------------------------------------------------------------------- truth vs files

def test_truth_schema_and_files(cohort, cohort_truth):
    t = cohort_truth
    assert t["generator"] == "nmbids-simulate" and t["seed"] == 11
    assert t["nuclei_source"] == "builtin" and "CR_true" in t["definition"]
    assert set(t["subjects"]) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    n_acq = 0
    for sub, ses, a in _all_acqs(t):
        n_acq += 1
        se = t["subjects"][sub]["sessions"][ses]
        A = np.array(se["subject_to_template_affine"])
        assert A.shape == (4, 4) and np.allclose(A[3], [0, 0, 0, 1])
        assert se["deformation"]["max_mm"] > 0
        assert (cohort / "bids" / se["t1w"]["source"]).is_file()
        assert a["source"] == a["sources"][0]
        assert ses == "n/a"
        for src in a["sources"]:
            assert src.startswith(f"{sub}/anat/{sub}_")
            assert (cohort / "bids" / src).is_file()
            assert (cohort / "bids" / src.replace(".nii.gz", ".json")).is_file()
        img = _load(cohort / "bids", a["source"])
        dseg = _load(cohort, a["truth_dseg"])
        prob = _load(cohort, a["truth_probseg"])
        assert dseg.shape == img.shape[:3] and prob.shape == img.shape[:3] + (6,)
        assert np.allclose(dseg.affine, img.affine)
        assert img.shape[2] == a["n_slices"]
        assert _load(cohort, a["truth_biasfield"]).shape == img.shape[:3]
        zooms = (a["inplane_mm"], a["inplane_mm"], a["slice_mm"])
        assert np.allclose(img.header.get_zooms()[:3], zooms, atol=1e-4)
        assert len(a["motion_mm"]) == a["n_repeats"] == len(a["motion_params"])
        assert a["motion_mm"][0] == 0 and all(0 <= m < 3 for m in a["motion_mm"])
        assert abs(a["slab_tilt_deg"]) <= 15
        for roi in sim.ROIS:
            cr, vol = a["cr"][roi], a["volume_mm3"][roi]
            assert cr["bilateral"] == pytest.approx(
                (cr["L"] * vol["L"] + cr["R"] * vol["R"]) / (vol["L"] + vol["R"]), abs=1e-5)
            assert vol["bilateral"] == pytest.approx(vol["L"] + vol["R"], abs=1e-2)
        if a["acq_type"] == "GREMT":
            assert a["cr"] == t["subjects"][sub]["cr_gremt"]
    assert n_acq == 4 * 3


def test_participants_and_cohort_effects(cohort, cohort_truth, tmp_path):
    with open(cohort / "bids" / "participants.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == ["participant_id", "age", "sex", "group", "site"]
    assert [r["group"] for r in rows] == ["control", "patient"] * 2
    assert {r["site"] for r in rows} == {"site1", "site2"}
    pj = json.loads((cohort / "bids" / "participants.json").read_text())
    assert {"age", "sex", "group", "site"} <= set(pj)
    for r in rows:
        s = cohort_truth["subjects"][r["participant_id"]]
        assert (s["group"], str(s["age"]), s["sex"], s["site"]) == \
            (r["group"], r["age"], r["sex"], r["site"])
        assert 20 <= int(r["age"]) <= 70 and r["sex"] in ("M", "F")
    # the effect is added to the patients' truth only (same seed without the effect)
    sim.simulate_dataset(tmp_path, n_subjects=2, seed=11, acq="gremt", groups="control,patient",
                         sites=2, **FAST)
    base = json.loads((tmp_path / "truth.json").read_text())["subjects"]
    eff = cohort_truth["subjects"]
    scale = cohort_truth["sites"]["site1"]["cr_scale"]
    for h in sim.HEMIS:
        e1, e2 = (eff[s]["cr_gremt"] for s in ("sub-01", "sub-02"))
        b1, b2 = (base[s]["cr_gremt"] for s in ("sub-01", "sub-02"))
        assert e1["SN"][h] == pytest.approx(b1["SN"][h], abs=1e-6)  # control: unchanged
        assert e2["SN"][h] - b2["SN"][h] == pytest.approx(0.05 * scale, abs=1e-5)
        assert e2["LC"][h] == pytest.approx(b2["LC"][h], abs=1e-6)


def test_volume_effect_scales_builtin_nuclei(tmp_path):
    sim.simulate_dataset(tmp_path, n_subjects=2, seed=1, acq="gremt", groups="hc,pd",
                         effects=["pd:SN:volume:-0.2"], **FAST)
    subs = json.loads((tmp_path / "truth.json").read_text())["subjects"]
    assert subs["sub-01"]["volume_template_mm3"]["SN"]["L"] == pytest.approx(271, abs=1)
    assert subs["sub-02"]["volume_template_mm3"]["SN"]["L"] == pytest.approx(0.8 * 271, rel=0.02)
    assert subs["sub-02"]["volume_template_mm3"]["LC"]["L"] == pytest.approx(50.75, abs=0.5)


def test_sessions_share_anatomy_and_truth(tmp_path):
    sim.simulate_dataset(tmp_path, n_subjects=1, seed=12, acq="gremt", sessions=2, **FAST)
    truth = json.loads((tmp_path / "truth.json").read_text())
    for sub, s in truth["subjects"].items():
        assert set(s["sessions"]) == {"ses-1", "ses-2"}
        for ses in ("ses-1", "ses-2"):
            anat = tmp_path / "bids" / sub / ses / "anat"
            assert (anat / f"{sub}_{ses}_T1w.nii.gz").is_file()
            assert (anat / f"{sub}_{ses}_acq-NM_run-1_T1w.nii.gz").is_file()
        s1, s2 = s["sessions"]["ses-1"], s["sessions"]["ses-2"]
        for a1, a2 in zip(s1["acquisitions"], s2["acquisitions"]):
            assert a1["cr"] == a2["cr"]
            for roi in sim.ROIS:  # same anatomy: same native volumes (rigid repositioning)
                for h in sim.HEMIS:
                    assert a1["volume_mm3"][roi][h] == pytest.approx(a2["volume_mm3"][roi][h], rel=1e-6)
            assert a1["slab_tilt_deg"] != a2["slab_tilt_deg"]  # new slab, noise and motion
        A1, A2 = (np.array(x["subject_to_template_affine"]) for x in (s1, s2))
        assert not np.allclose(A1, A2)  # new head position
        assert abs(np.linalg.det(A1[:3, :3]) - np.linalg.det(A2[:3, :3])) < 1e-6


def test_mt_pair_identical_geometry(cohort, cohort_truth):
    for sub, ses, a in _all_acqs(cohort_truth):
        if a["acq_type"] != "MTR":
            continue
        on, off = a["sources"]
        assert "_mt-on_MTR" in on and "_mt-off_MTR" in off
        i_on, i_off = _load(cohort / "bids", on), _load(cohort / "bids", off)
        assert i_on.shape == i_off.shape and len(i_on.shape) == 3
        assert np.array_equal(i_on.affine, i_off.affine)
        m_on = json.loads((cohort / "bids" / on.replace(".nii.gz", ".json")).read_text())
        m_off = json.loads((cohort / "bids" / off.replace(".nii.gz", ".json")).read_text())
        assert m_on["MTState"] is True and m_off["MTState"] is False
        for roi in sim.ROIS:  # NM-rich nuclei have a lower MTR than their reference
            ref = a["mtr"]["CC"]["bilateral"] if roi != "LC" else a["mtr"]["PT"]["bilateral"]
            assert 0 < a["mtr"][roi]["bilateral"] < ref


def test_fse_slab_covers_lc(cohort, cohort_truth):
    n = 0
    for sub, ses, a in _all_acqs(cohort_truth):
        if a["acq_type"] != "FSE":
            continue
        n += 1
        assert a["slice_mm"] == 2.5 and a["n_slices"] == 14
        assert a["coverage"]["LC"]["L"] > 0.99 and a["coverage"]["LC"]["R"] > 0.99
        dseg = np.asarray(_load(cohort, a["truth_dseg"]).dataobj)
        assert (dseg == 5).any() and (dseg == 6).any()
        meta = json.loads((cohort / "bids" / a["source"].replace(".nii.gz", ".json")).read_text())
        assert meta["ScanningSequence"] == "SE" and meta["EchoTrainLength"] == 3
        assert a["cr"]["LC"]["L"] < cohort_truth["subjects"][sub]["cr_gremt"]["LC"]["L"]
    assert n == 4


def test_naming_variants_and_layouts(cohort, cohort_truth):
    names = {Path(a["source"]).name for _, _, a in _all_acqs(cohort_truth)}
    assert any("acq-neuromelanin_run-1_T1w" in n for n in names)
    assert any("acq-NM_T2starw" in n for n in names)
    for _, _, a in _all_acqs(cohort_truth):
        img = _load(cohort / "bids", a["source"])
        if a["source"].endswith("_T1w.nii.gz"):  # BIDS: _T1w must be 3D -> runs
            assert img.ndim == 3 and len(a["sources"]) == a["n_repeats"]
        elif "T2starw" in a["source"]:
            assert img.ndim == 4 and img.shape[3] == a["n_repeats"] and len(a["sources"]) == 1


# --------------------------------------------------------------------------- contrast

def _measured_cr(root: Path, a: dict, rel: str | None = None) -> dict[str, float]:
    img = np.asarray(_load(root / "bids", rel or a["source"]).dataobj, dtype=float)
    if img.ndim == 4:
        img = img[..., 0]
    prob = np.asarray(_load(root, a["truth_probseg"]).dataobj)
    dseg = np.asarray(_load(root, a["truth_dseg"]).dataobj)
    refs = {"CC": img[(dseg == 7) | (dseg == 8)], "PT": img[dseg == 9]}
    out = {}
    for k, name in enumerate(sim.NUCLEI):
        roi = name.split("_")[0]
        core = prob[..., k] == 1
        ref = refs[sim.REFERENCE[roi]]
        if core.sum() >= 1 and ref.size >= 10:
            out[name] = img[core].mean() / np.median(ref) - 1
    return out


def test_noise_free_image_has_the_true_contrast(noise_free):
    truth = json.loads((noise_free / "truth.json").read_text())
    for _, _, a in _all_acqs(truth):
        got = _measured_cr(noise_free, a)
        assert {"SN_L", "SN_R", "LC_L", "LC_R"} <= set(got), (a["acq_type"], sorted(got))
        for name, value in got.items():
            roi, h = name.split("_")
            assert value == pytest.approx(a["cr"][roi][h], abs=3e-3), (a["acq_type"], name)
        # the noise-free reference core equals the stated reference value (int16 rounding)
        img = np.asarray(_load(noise_free / "bids", a["source"]).dataobj, float)
        dseg = np.asarray(_load(noise_free, a["truth_dseg"]).dataobj)
        assert np.median(img[dseg == 9]) == pytest.approx(a["reference_value"]["PT"], abs=1)
        if a["acq_type"] == "MTR":
            # mt-off moved a little after mt-on (the truth grid), so check MTR on the large
            # reference regions, whose cores are homogeneous well beyond the motion
            on, off = (np.asarray(_load(noise_free / "bids", s).dataobj, float) for s in a["sources"])
            cc = (dseg == 7) | (dseg == 8)
            mtr_cc = 100 * (1 - np.median(on[cc]) / np.median(off[cc]))
            assert mtr_cc == pytest.approx(a["mtr"]["CC"]["bilateral"], abs=1.0)


def test_zero_filled_noise_is_shared_by_adjacent_voxels():
    """--nm-zero-fill 2: noise of sd sigma per channel, correlated between adjacent voxels as a
    zero-filled reconstruction's (about 0.64, a sinc's at half a pixel), so that nmbids judges
    the image to need the ring of 16 neighbours; 1 (the default): independent noise."""
    from nmbids import measures as m
    from nmbids.phantom.acquisition import rician, zero_filled_noise
    from nmbids.phantom.options import Options

    rng = np.random.default_rng(0)
    noise = zero_filled_noise(rng, (81, 64, 3), 2)
    assert noise.shape == (81, 64, 3)
    assert noise.real.std() == pytest.approx(1.0, abs=0.05) and noise.imag.std() == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(noise.real[:-1].ravel(), noise.real[1:].ravel())[0, 1] == pytest.approx(0.64, abs=0.05)
    flat = np.full((80, 64, 3), 1000.0, np.float32)
    mask = np.ones(flat.shape, bool)
    assert m.neighbour_distance(rician(rng, flat, 50.0, zero_fill=2), mask) == 2
    assert m.neighbour_distance(rician(rng, flat, 50.0), mask) == 1
    with pytest.raises(ValueError, match="zero-fill"):
        Options(nm_zero_fill=0).validate()


def test_slice_zero_filled_noise_is_shared_by_adjacent_slices_only():
    """--nm-slice-zero-fill 2 (a 3D slab reconstructed with interpolated slices): noise of sd
    sigma per channel, correlated between adjacent slices (about 0.64) and not in plane, so
    that nmbids judges the slices to share it (``slices_share_noise``) and keeps the 8 nearest
    in-plane neighbours (``neighbour_distance`` 1)."""
    from nmbids import measures as m
    from nmbids.phantom.acquisition import rician, zero_filled_noise
    from nmbids.phantom.options import Options

    rng = np.random.default_rng(1)
    noise = zero_filled_noise(rng, (48, 40, 25), (1, 1, 2))
    assert noise.shape == (48, 40, 25)
    assert noise.real.std() == pytest.approx(1.0, abs=0.05) and noise.imag.std() == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(noise.real[:, :, :-1].ravel(), noise.real[:, :, 1:].ravel())[0, 1] == pytest.approx(0.64, abs=0.05)
    assert abs(np.corrcoef(noise.real[:-1].ravel(), noise.real[1:].ravel())[0, 1]) < 0.05
    flat = np.full((48, 40, 24), 1000.0, np.float32)
    mask = np.ones(flat.shape, bool)
    filled = rician(rng, flat, 50.0, slice_zero_fill=2)
    assert m.slices_share_noise(filled, mask) and m.neighbour_distance(filled, mask) == 1
    assert not m.slices_share_noise(rician(rng, flat, 50.0), mask)
    with pytest.raises(ValueError, match="zero-fill"):
        Options(nm_slice_zero_fill=0).validate()


def test_high_snr_image_recovers_contrast(tmp_path):
    sim.simulate_dataset(tmp_path, n_subjects=1, seed=8, acq="gremt", snr=400, bias=0.0, **FINE)
    truth = json.loads((tmp_path / "truth.json").read_text())
    (_, _, a), = list(_all_acqs(truth))
    got = _measured_cr(tmp_path, a)
    for name in ("SN_L", "SN_R"):
        roi, h = name.split("_")
        assert got[name] == pytest.approx(a["cr"][roi][h], abs=0.01)


@pytest.mark.parametrize("orientation, slice_codes", [("sagittal", "LR"), ("coronal", "AP")])
def test_sagittal_and_coronal_slabs(tmp_path, orientation, slice_codes):
    """--nm-orientation: the slab's slices are stacked along L-R or A-P instead of S-I, with
    the truth (nucleus labels, CR) on the same grid: the nuclei's cores hold the true CR."""
    from nmbids.phantom.options import Options

    sim.simulate_dataset(tmp_path, n_subjects=1, seed=8, acq="gremt", snr=400, bias=0.0, nm_orientation=orientation,
                         **FINE)
    truth = json.loads((tmp_path / "truth.json").read_text())
    (_, _, a), = list(_all_acqs(truth))
    img = _load(tmp_path / "bids", a["source"])
    assert nb.aff2axcodes(img.affine)[2] in slice_codes and img.header.get_zooms()[2] == pytest.approx(2.0)
    got = _measured_cr(tmp_path, a)
    for name in ("SN_L", "SN_R"):
        roi, h = name.split("_")
        assert got[name] == pytest.approx(a["cr"][roi][h], abs=0.01)
    with pytest.raises(ValueError, match="orientation"):
        Options(nm_orientation="oblique").validate()


# --------------------------------------------------------------------------- external nuclei

@pytest.mark.skipif(not AAL3.is_file(), reason="AAL3 test atlas (../shared) not available")
def test_nuclei_from_aal3(tmp_path):
    sim.simulate_dataset(tmp_path, n_subjects=1, seed=2, acq="gremt", nuclei=str(AAL3),
                         noise_free=True, **FINE)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["nuclei_source"] == str(AAL3)
    vt = truth["subjects"]["sub-01"]["volume_template_mm3"]
    # volumes measured on the 1 mm file (ORIGIN.md): SN_pc 251/270, VTA 71/65, LC 48/53
    assert (vt["SN"]["L"], vt["SN"]["R"]) == (251.0, 270.0)
    assert (vt["VTA"]["L"], vt["VTA"]["R"]) == (71.0, 65.0)
    assert (vt["LC"]["L"], vt["LC"]["R"]) == (48.0, 53.0)
    (_, _, a), = list(_all_acqs(truth))
    got = _measured_cr(tmp_path, a)
    for name in ("SN_L", "SN_R"):
        roi, h = name.split("_")
        assert got[name] == pytest.approx(a["cr"][roi][h], abs=3e-3)
    # an explicit mapping gives the same nuclei
    a2 = sim.AtlasNuclei(AAL3, "SN_L=161,SN_R=162,VTA_L=159,VTA_R=160,LC_L=167,LC_R=168")
    a1 = sim.AtlasNuclei(AAL3)
    assert np.array_equal(a1.vol, a2.vol)


def test_label_table_parsing(tmp_path):
    tsv = tmp_path / "atlas-X_dseg.tsv"
    tsv.write_text("index\tname\n1\tSN_pc_L_161\n2\tSN_pc_R\n3\tSN_pr_L\n4\tVTA_L\n5\tVTA_R\n"
                   "6\tLC_L\n7\tLC_R\n8\tRed_N_L\n")
    got = read_label_table(tsv)
    assert got == {"SN_L": [1], "SN_R": [2], "VTA_L": [4], "VTA_R": [5], "LC_L": [6], "LC_R": [7]}


# --------------------------------------------------------------------------- BIDS validity, CLI

def test_bids_validator_passes(cohort):
    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno not installed")
    res = subprocess.run([exe, "--format", "json", str(cohort / "bids")], capture_output=True,
                         text=True, timeout=300)
    report = json.loads(res.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert not errors, errors[:5]


def test_cli(tmp_path, capsys):
    out = tmp_path / "ph"
    rc = main([str(out), "--n", "1", "--seed", "2", "--t1w-res", "3", "--nm-inplane", "1.5",
                   "--nm-fov", "90x100", "--repeats", "2", "--repeats-layout", "4d",
                   "--nm-slices", "12", "--effect", "SN:cr:0.02", "--groups", "a,b"])
    assert rc == 0
    img = nb.load(str(out / "bids" / "sub-01" / "anat" / "sub-01_acq-NM_T1w.nii.gz"))
    assert img.shape[2:] == (12, 2)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["args"]["effects"] == ["SN:cr:0.02"] and truth["args"]["n"] == 1
    # errors are reported with exit code 2, not a traceback
    assert main([str(out), "--n", "1"]) == 2
    assert main([str(tmp_path / "x"), "--acq", "spiral"]) == 2
    assert not (tmp_path / "x").exists()  # nothing written when the arguments are wrong
    assert main([str(tmp_path / "y"), "--effect", "SN:cr:0.1"]) == 2  # one group only


def test_cr_sd_gives_a_realistic_spread(tmp_path):
    rng = np.random.default_rng(0)
    draws = np.array([sim.draw_base_cr(rng, "SN", 0.02) for _ in range(4000)])
    assert draws.mean() == pytest.approx(0.20, abs=0.002)
    assert draws.std() == pytest.approx(0.02, rel=0.05)
    assert np.all(np.abs(draws - 0.20) <= 0.06 + 1e-12)
    wide = np.array([sim.draw_base_cr(rng, "SN") for _ in range(4000)])  # default: U(0.10, 0.30)
    assert wide.min() >= 0.10 and wide.max() <= 0.30 and wide.std() == pytest.approx(0.2 / 12 ** 0.5, rel=0.05)
    with pytest.raises(ValueError):
        sim.simulate_dataset(tmp_path, n_subjects=1, seed=0, cr_sd=-0.1, **FAST)
