"""The MT-pair validation: does ``mtr`` scale with the nucleus's true MTR?

One phantom cohort of MT on/off pairs (nuclei from AAL3 when present) in two truth regimes:
group ``below`` has its nuclei's CR raised by ``REGIME_CR["below"]``, which puts the nucleus's
MTR below grey matter's (the phantom's GM MTR is 33 %), group ``above`` has it lowered by
``REGIME_CR["above"]``, which puts it above grey matter's and, for the lowest CRs, above white
matter's (42 %). On the MT-on image the nucleus is then brighter than grey matter in one regime
and darker in the other, so an estimator that assumes the direction of the nucleus's contrast
fails in one of them. The same subjects (same seed: anatomy, truth, slab, motion) are simulated
at every cell of SNR (per image, in white matter) x repeats and each cell is run through
``nmbids participant``.

Repeats: the phantom writes one MT-on and one MT-off image, and nmbids averages repeated
MT-on runs but takes one MT-off. ``r`` repeats are emulated as the noise of ``r`` averaged
repeats of both images, an SNR of ``snr * sqrt(r)`` per image (same seed, so the same noise
pattern scaled); what averaging real repeats adds besides (their realignment) is not in it.

Measured per target ROI and hemisphere: the table's ``mtr`` (the nucleus's MTR, method
``neighbour_residual_top_volume``) and ``mtr_roimean`` (the search region mean, the default
before), and two values re-measured from the written MTR map: ``core``, the mean over the
voxels the truth puts at least 90 % inside the nucleus (what a perfect nucleus label would read
on the same images), and ``lowest``, the mean MTR of the same number of voxels as ``mtr`` but
chosen as those whose neighbours have the lowest MTR (the choice that assumes the nucleus's MTR
is below its surroundings'). Both use the tissue voxels as ``mt_rows`` does (fluid by the
neighbours' MTR).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from nmbids import measures as m
from nmbids.acquisitions import PROFILES

from . import stats as st
from .measure import load_measures, truth_acqs

SNRS = (14.0, 25.0)  # per image, in white matter
REPEATS = (1, 3)
REGIME_CR = {"below": 0.12, "above": -0.10}  # added to every nucleus's CR (GRE-MT units)
MEASURES = ("mtr", "mtr_roimean", "core", "lowest")
TARGETS = ("SN", "VTA", "LC")
GOAL = (0.8, 1.2)  # slope and measured/true
CORE = 0.9  # truth probseg fraction of the "core" voxels


def cohort(nuclei: str, n_subjects: int = 8, seed: int = 400) -> dict:
    """``simulate_dataset`` keyword arguments of the cohort (without ``snr``)."""
    effects = tuple(f"{g}:{roi}:cr:{v:g}" for g, v in REGIME_CR.items() for roi in TARGETS)
    return dict(n_subjects=n_subjects, seed=seed, acq=("mtr",), nuclei=nuclei, t1w_res=1.5, nm_inplane=0.8,
                nm_fov=(110.0, 120.0), groups=tuple(REGIME_CR), effects=effects)


def cell_name(snr: float, repeats: int) -> str:
    return f"snr-{snr:g}_rep-{repeats}"


def simulate_cell(root: Path, kwargs: dict, snr: float, repeats: int) -> Path:
    """The cohort at one cell under ``root/<cell>`` (kept when already there)."""
    from nmbids.phantom import simulate_dataset

    d = root / cell_name(snr, repeats)
    if not (d / "truth.json").exists():
        kw = dict(kwargs)
        n, seed = kw.pop("n_subjects"), kw.pop("seed")
        simulate_dataset(d, n_subjects=n, seed=seed, overwrite=True, snr=snr * math.sqrt(repeats), **kw)
    return d


def _remeasured(out: Path, root: Path, sub: str, ses: str, acq: dict) -> list[dict]:
    """``core`` and ``lowest`` of every target ROI and hemisphere from the written MTR map."""
    d = out / sub / ("" if ses == "n/a" else ses) / "anat"
    prefix = f"{sub}_" + ("" if ses == "n/a" else f"{ses}_") + "acq-MTR_"
    mtr_img = nb.load(str(d / f"{prefix}MTRmap.nii.gz"))
    mtr = np.asanyarray(mtr_img.dataobj).astype(float)
    mtr[mtr == 0] = np.nan  # written as 0 where the ratio is undefined
    dseg = np.asanyarray(nb.load(str(d / f"{prefix}desc-rois_dseg.nii.gz")).dataobj).astype(int)
    table = pd.read_csv(d / f"{prefix}desc-rois_dseg.tsv", sep="\t")
    prob = np.asanyarray(nb.load(str(Path(root) / acq["truth_probseg"])).dataobj).astype(float)
    profile = PROFILES["MTR"]
    vox = float(np.prod(mtr_img.header.get_zooms()[:3]))
    refs = np.isin(dseg, table.loc[table.roi.isin(set(profile.references.values())), "index"])
    tissue = np.isfinite(mtr) & m.mt_tissue_mask(m.inplane_neighbour_mean(mtr), float(np.nanmedian(mtr[refs])),
                                                 profile.tissue_mtr_fraction)
    mtr_t = np.where(tissue, mtr, np.nan)
    scores = m.inplane_neighbour_mean(mtr_t)
    rows = []
    for k, roi in enumerate(TARGETS):
        for j, hemi in enumerate(("L", "R")):
            labels = table.loc[(table.roi == roi) & (table.hemi == hemi), "index"]
            sel = np.isin(dseg, labels) & tissue
            core = sel & (prob[..., 2 * k + j] >= CORE)
            n = m.n_top_voxels(profile.top_volume_of(roi), vox, profile.min_voxels)
            rows.append(dict(roi=roi, hemi=hemi, measure="core",
                             value=float(np.mean(mtr_t[core])) if core.sum() >= profile.min_voxels else np.nan))
            rows.append(dict(roi=roi, hemi=hemi, measure="lowest", value=_lowest_mean(mtr_t[sel], scores[sel], n)))
    return rows


def _lowest_mean(values: np.ndarray, scores: np.ndarray, n: int) -> float:
    """Mean of the ``n`` values whose scores are lowest (NaN with fewer than ``n`` finite)."""
    ok = np.isfinite(values) & np.isfinite(scores)
    if ok.sum() < n:
        return float("nan")
    return float(np.mean(values[ok][np.argsort(scores[ok], kind="stable")[:n]]))


def cell_values(d: Path, snr: float, repeats: int) -> pd.DataFrame:
    """One row per subject, target ROI, hemisphere (L, R) and measure: measured and true MTR."""
    truth = json.loads((d / "truth.json").read_text())
    meas = load_measures(d / "out")
    idx = meas.set_index(["participant_id", "roi", "hemi", "measure"])["value"]
    idx = idx[~idx.index.duplicated()]
    rows = []
    for sub, ses, acq in truth_acqs(truth):
        group = truth["subjects"][sub]["group"]
        extra = {(r["roi"], r["hemi"], r["measure"]): r["value"] for r in _remeasured(d / "out", d, sub, ses, acq)}
        for roi in TARGETS:
            for hemi in ("L", "R"):
                true = acq["mtr"][roi][hemi]
                for measure in MEASURES:
                    est = extra.get((roi, hemi, measure)) if measure in ("core", "lowest") \
                        else idx.get((sub, roi, hemi, measure), np.nan)
                    rows.append(dict(snr=snr, repeats=repeats, snr_effective=round(snr * math.sqrt(repeats), 1),
                                     sub=sub, regime=group, roi=roi, hemi=hemi, measure=measure,
                                     est=float(est) if est is not None else np.nan, true=float(true)))
    return pd.DataFrame(rows)


def summary(values: pd.DataFrame) -> pd.DataFrame:
    """Per cell, ROI, measure and regime (``all``, ``below``, ``above``): n, bias, slope, r and
    the median of measured/true."""
    rows = []
    for (snr, rep, roi, measure), g in values.groupby(["snr", "repeats", "roi", "measure"], sort=False):
        for regime, gg in [("all", g)] + [(r, g[g.regime == r]) for r in REGIME_CR]:
            rec = st.recovery(gg.est.to_numpy(), gg.true.to_numpy())
            ratio = (gg.est / gg.true).dropna()
            rows.append(dict(snr=snr, repeats=rep, snr_effective=gg.snr_effective.iloc[0], roi=roi, measure=measure,
                             regime=regime, n=rec["n"], true_min=gg.true.min(), true_max=gg.true.max(),
                             bias=rec["bias"], slope=rec["slope"], r=rec["r"],
                             ratio=float(ratio.median()) if len(ratio) else np.nan))
    return pd.DataFrame(rows)


def meets_goal(row) -> bool:
    return bool(GOAL[0] <= row["slope"] <= GOAL[1] and GOAL[0] <= row["ratio"] <= GOAL[1])
