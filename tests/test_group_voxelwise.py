"""Voxelwise permutation test: finds a set blob, not elsewhere; skips cleanly."""
from __future__ import annotations

import json
import logging

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from nmbids.group import run_group
from nmbids.group.synthetic import AFFINE, ATLAS_ROWS, BLOB, SPACE, SimSpec, simulate
from nmbids.group.voxelwise import load_mask


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox")
    spec = SimSpec(n_per_group={"HC": 10, "SZ": 10}, crmaps=True, blob_effect=0.12, map_noise=0.04,
                   measures=("cr",), rois=("SN",), seed=4)
    simulate(root / "bids", root / "out", spec)
    # one participant whose map misses most of the mask: left out with a reason
    p = root / "out" / "sub-003" / "anat" / f"sub-003_acq-NM_space-{SPACE}_crmap.nii.gz"
    img = nb.load(str(p))
    d = img.get_fdata().astype(np.float32)
    d[:, :, 5:] = np.nan
    nb.Nifti1Image(d, img.affine).to_filename(str(p))
    rc = run_group(root / "bids", root / "out", group_column="group", covariates=("age",), n_permutations=200,
                   seed=0)
    return rc, root / "out" / "group"


def test_blob_found_and_nothing_elsewhere(blob_run):
    rc, g = blob_run
    assert rc == 0
    from nmbids.images import template_xform_code

    timg = nb.load(str(g / "voxelwise_SZvsHC_tstat.nii.gz"))
    assert int(timg.header["qform_code"]) == int(timg.header["sform_code"]) == template_xform_code(SPACE)
    assert timg.header.get_xyzt_units() == ("mm", "unknown")  # 3-D: no time unit
    t = timg.get_fdata()
    logp = nb.load(str(g / "voxelwise_SZvsHC_logp_fwe.nii.gz")).get_fdata()
    sig = logp > -np.log10(0.05)
    blob = np.zeros(t.shape, dtype=bool)
    blob[BLOB] = True
    assert sig[blob].mean() > 0.5, "the blob is detected"
    assert (t[sig] > 0).all(), "in the set direction"
    assert not sig[~blob].any(), "nothing outside the blob"
    # tested only inside the mask
    mask = load_mask(next((g.parent / "atlas").glob("*_dseg.nii.gz")))[0]
    assert not np.any(t[~mask])


def test_cluster_table_and_figure(blob_run):
    _, g = blob_run
    cl = pd.read_csv(g / "voxelwise_SZvsHC_clusters.tsv", sep="\t")
    assert list(cl.columns) == ["cluster_id", "x", "y", "z", "peak_t", "cluster_size_mm3", "region"]
    assert len(cl) >= 1 and cl["peak_t"].iat[0] > 0 and cl["region"].iat[0] == "SN_L"
    assert (g / "figures" / "voxelwise_SZvsHC.png").stat().st_size > 1000
    assert "voxelwise_SZvsHC_tstat.nii.gz" in (g / "group_report.html").read_text()


def test_partial_coverage_participant_left_out(blob_run):
    _, g = blob_run
    st = pd.read_csv(g / "group_participants.tsv", sep="\t", keep_default_na=False).set_index("participant_id")
    assert st.loc["sub-003", "in_voxelwise"] == "no" and "covers" in st.loc["sub-003", "reason"]
    assert (st.drop(index="sub-003")["in_voxelwise"] == "yes").all()


def test_too_few_per_group_skips_cleanly(tmp_path, caplog):
    simulate(tmp_path / "bids", tmp_path / "out",
             SimSpec(n_per_group={"HC": 2, "SZ": 5}, crmaps=True, measures=("cr",), rois=("SN",)))
    with caplog.at_level(logging.WARNING, logger="nmbids"):
        rc = run_group(tmp_path / "bids", tmp_path / "out", group_column="group", n_permutations=20)
    assert rc == 0
    assert "voxelwise analysis skipped" in caplog.text and "fewer than 3" in caplog.text
    assert not list((tmp_path / "out" / "group").glob("voxelwise_*"))
    assert "Skipped" in (tmp_path / "out" / "group" / "group_report.html").read_text()


def test_no_maps_skips_cleanly(tmp_path, caplog):
    simulate(tmp_path / "bids", tmp_path / "out", SimSpec(n_per_group={"HC": 4, "SZ": 4}, measures=("cr",)))
    with caplog.at_level(logging.WARNING, logger="nmbids"):
        assert run_group(tmp_path / "bids", tmp_path / "out", n_permutations=20) == 0
    assert "voxelwise analysis skipped" in caplog.text


def test_atlas_mask_is_targets_dilated_without_references(tmp_path):
    simulate(tmp_path / "bids", tmp_path / "out", SimSpec(n_per_group={"HC": 1}, crmaps=True, measures=("cr",)))
    mask, labels, _, names = load_mask(tmp_path / "out" / "atlas" / f"tpl-{SPACE}_atlas-nmbids_dseg.nii.gz")
    targets = [r[0] for r in ATLAS_ROWS if r[4] == "target"]
    refs = [r[0] for r in ATLAS_ROWS if r[4] == "reference"]
    assert mask[np.isin(labels, targets)].all()
    assert not mask[np.isin(labels, refs)].any()
    assert mask.sum() > np.isin(labels, targets).sum()  # dilated
    assert names[1] == "SN_L"


# ---------------------------------------------------------------------------
# maps named the way real datasets name their NM images: the group level reads each
# map's acquisition type, source and space from its sidecar, never from its name
# ---------------------------------------------------------------------------

MIXED = ("single", "runs", "4d", "mt")  # cycled over participants: sub-001 single, sub-002 runs, ...


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    spec = SimSpec(n_per_group={"HC": 12, "SZ": 12}, crmaps=True, naming=MIXED, sessions=("1", "2"),
                   blob_effect=0.12, map_noise=0.04, measures=("cr",), rois=("SN",), seed=5)
    simulate(root / "bids", root / "out", spec)
    out = root / "out"
    # sub-005 (single image, HC): neither session's sidecar says what the map is
    for ses in ("1", "2"):
        side = out / "sub-005" / f"ses-{ses}" / "anat" / f"sub-005_ses-{ses}_acq-NM_space-{SPACE}_crmap.json"
        meta = _json(side)
        del meta["AcquisitionType"]
        side.write_text(json.dumps(meta))
    # sub-007 (4D): its first session's map names a source without measures: left out, ses-2 used
    side = out / "sub-007" / "ses-1" / "anat" / f"sub-007_ses-1_acq-gre_space-{SPACE}_crmap.json"
    meta = _json(side)
    meta["Sources"] = ["bids:raw:sub-007/ses-1/anat/sub-007_ses-1_acq-other_NM.nii.gz"]
    side.write_text(json.dumps(meta))
    # sub-006 (run- repeats): its first session's source is excluded, so its second session's map is used
    exclude = root / "exclude.tsv"
    exclude.write_text("participant_id\tsession_id\tsource\treason\n"
                       "sub-006\tses-1\tsub-006/ses-1/anat/sub-006_ses-1_acq-neuromelanin_run-1_NM.nii.gz\tslab\n")
    rc = run_group(root / "bids", out, group_column="group", n_permutations=50, seed=0, exclude=exclude)
    return rc, out / "group"


def test_mixed_naming_every_map_in_its_acquisition_type(mixed_run):
    rc, g = mixed_run
    assert rc == 0
    assert not list(g.glob("voxelwise_unknown*"))
    gre = _json(g / "voxelwise_GREMT_SZvsHC_tstat.json")
    mtr = _json(g / "voxelwise_MTR_SZvsHC_tstat.json")
    # single, run- repeats and 4D images are GRE-MT (9 per group, sub-005 left out); MT pairs are MTR
    assert gre["N"] == 17 and mtr["N"] == 6
    used = set(gre["Sources"]) | set(mtr["Sources"])
    for pid, ses, prefix in [("sub-002", "1", "acq-neuromelanin"), ("sub-003", "1", "acq-gre"),
                             ("sub-004", "1", "acq-MTR"), ("sub-001", "1", "acq-NM"),
                             ("sub-006", "2", "acq-neuromelanin"), ("sub-007", "2", "acq-gre")]:
        assert f"bids::{pid}/ses-{ses}/anat/{pid}_ses-{ses}_{prefix}_space-{SPACE}_crmap.nii.gz" in used
    assert not any("sub-005" in s for s in used)
    assert not any("sub-006/ses-1" in s for s in used) and not any("sub-007/ses-1" in s for s in used)


def test_mixed_naming_in_voxelwise_says_so(mixed_run):
    _, g = mixed_run
    st = pd.read_csv(g / "group_participants.tsv", sep="\t", keep_default_na=False).set_index("participant_id")
    assert st.loc["sub-005", "in_voxelwise"] == "no"
    assert "AcquisitionType" in st.loc["sub-005", "reason"]
    assert (st.drop(index="sub-005")["in_voxelwise"] == "yes").all(), st[st["in_voxelwise"] != "yes"]
    assert "excluded" in st.loc["sub-006", "reason"]
    assert "sub-007_ses-1_acq-gre_space-SYN_crmap.nii.gz: its source" in st.loc["sub-007", "reason"]
    assert "has no measures" in st.loc["sub-007", "reason"]


# ---------------------------------------------------------------------------
# cluster-level FWE (the cluster results of non_parametric_inference)
# ---------------------------------------------------------------------------

def test_cluster_level_table_finds_the_planted_cluster(blob_run):
    _, g = blob_run
    cl = pd.read_csv(g / "voxelwise_SZvsHC_clusterlevel.tsv", sep="\t", keep_default_na=False)
    assert list(cl.columns) == ["cluster_id", "n_voxels", "size_mm3", "peak_t", "x", "y", "z", "region",
                                "p_fwe_size", "p_fwe_mass", "peak_p_fwe"]
    doc = _json(g / "voxelwise_SZvsHC_clusterlevel.json")
    assert set(cl.columns) <= set(doc) and doc["ClusterFormingThreshold"]["p"] == 0.001
    hit = cl[(cl["region"] == "SN_L") & (cl["p_fwe_size"] < 0.05)]
    assert len(hit) == 1 and hit["peak_t"].iat[0] > 0
    assert hit["n_voxels"].iat[0] >= np.prod([s.stop - s.start for s in BLOB]) // 2
    assert hit["size_mm3"].iat[0] == hit["n_voxels"].iat[0] * 8.0  # 2 mm voxels
    # the peak is in the blob
    ijk = np.rint(np.linalg.inv(AFFINE) @ [*hit[["x", "y", "z"]].iloc[0].astype(float), 1.0])[:3].astype(int)
    assert all(s.start <= v < s.stop for v, s in zip(ijk, BLOB))
    # no significant cluster anywhere else (SN_R is a null region)
    assert not ((cl["region"] != "SN_L") & (cl["p_fwe_size"] < 0.05)).any()
    # the clusters are nilearn's: every voxel with |t| above the recorded cluster-forming t, no other
    t = nb.load(str(g / "voxelwise_SZvsHC_tstat.nii.gz")).get_fdata()
    assert cl["n_voxels"].sum() == (np.abs(t) > doc["ClusterFormingThreshold"]["t"]).sum()


def test_cluster_level_maps_and_sidecars(blob_run):
    _, g = blob_run
    size = nb.load(str(g / "voxelwise_SZvsHC_logp_clustersize_fwe.nii.gz")).get_fdata()
    mass = nb.load(str(g / "voxelwise_SZvsHC_logp_clustermass_fwe.nii.gz")).get_fdata()
    atlas = nb.load(str(next((g.parent / "atlas").glob("*_dseg.nii.gz")))).get_fdata()
    blob = np.zeros(size.shape, dtype=bool)
    blob[BLOB] = True
    for lp in (size, mass):
        assert (lp[blob] > -np.log10(0.05)).mean() > 0.5
        assert not (lp[atlas == 2] > -np.log10(0.05)).any()  # SN_R: null
    for kind in ("clustersize", "clustermass"):
        meta = _json(g / f"voxelwise_SZvsHC_logp_{kind}_fwe.json")
        thr = meta["ClusterFormingThreshold"]
        assert thr["p"] == 0.001 and thr["t"] > 3 and thr["TwoSided"] is True
        assert meta["NumberOfPermutations"] == 200 and meta["Connectivity"] == 6
        assert ("size" if kind == "clustersize" else "mass") in meta["Statistic"]
    report = (g / "group_report.html").read_text()
    assert "voxelwise_SZvsHC_clusterlevel.tsv" in report
    assert "voxelwise_SZvsHC_logp_clustersize_fwe.nii.gz" in report


def test_qc_covariate_in_both_analyses(tmp_path):
    """--covariates snr: a QC column, per image; a participant whose image has no SNR is left out of
    the ROI models and of the voxelwise test, with the reason, not the run."""
    spec = SimSpec(n_per_group={"HC": 6, "SZ": 6}, crmaps=True, blob_effect=0.12, measures=("cr",), rois=("SN",),
                   seed=6)
    simulate(tmp_path / "bids", tmp_path / "out", spec)
    qc_file = tmp_path / "out" / "sub-002" / "anat" / "sub-002_desc-nm_qc.tsv"
    qc = pd.read_csv(qc_file, sep="\t", dtype=str, keep_default_na=False)
    qc["snr"] = "n/a"
    qc.to_csv(qc_file, sep="\t", index=False)
    assert run_group(tmp_path / "bids", tmp_path / "out", group_column="group", covariates=("snr",),
                     n_permutations=20) == 0
    g = tmp_path / "out" / "group"
    stats = pd.read_csv(g / "group_stats.tsv", sep="\t")
    sn = stats[(stats["roi"] == "SN") & (stats["hemi"] == "L") & (stats["measure"] == "cr")]
    assert set(sn["term"]) == {"group[SZ vs HC]", "snr"} and (sn["n"] == 11).all()
    assert "snr" in _json(g / "group_stats.json")["Model"]["ImageCovariates"]
    report = (g / "group_report.html").read_text()
    assert "<dt>QC covariates</dt><dd><code>snr</code>:" in report
    assert "snr is a column\nof the participant-level QC table" in report  # the methods paragraph
    st = pd.read_csv(g / "group_participants.tsv", sep="\t", keep_default_na=False).set_index("participant_id")
    assert st.loc["sub-002", "in_voxelwise"] == "no" and "no QC value of snr" in st.loc["sub-002", "reason"]
    assert (st.drop(index="sub-002")["in_voxelwise"] == "yes").all()
