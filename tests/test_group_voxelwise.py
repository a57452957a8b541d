"""Voxelwise permutation test: finds a set blob, not elsewhere; skips cleanly."""
from __future__ import annotations

import logging

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from nmbids.group import run_group
from nmbids.group.synthetic import ATLAS_ROWS, BLOB, SPACE, SimSpec, simulate
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
    t = nb.load(str(g / "voxelwise_SZvsHC_tstat.nii.gz")).get_fdata()
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
