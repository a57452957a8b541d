"""The SNR sweep of the validation: how far each CR estimator drifts with noise.

One phantom cohort (nuclei from AAL3 when present; 0.5 x 0.5 x 1.5 mm GRE-MT slab and an FSE
slab; 3 repeats; 2 sessions) is simulated at a base SNR and run through ``nmbids participant``.
The same cohort is then simulated again, with the same seed, at every SNR of the sweep: the
anatomy, slab placement, motion and bias field are the same, and so is the noise pattern up
to its scale (``nmbids-simulate`` draws the same normal deviates). The images of each SNR are
realigned and bias-corrected with the pipeline's functions (``align_repeats``, ``n4_field``
at ``NM_N4_SPLINE_MM``) using the first 1, 2 or 3 repeats, and measured with
``nmbids.roi_measures.measure_rois`` on the ROIs and transforms the pipeline wrote for the base run (the
same grid, so the same ROIs). What changes between cells is only the noise: the registrations
are those of the base SNR (a limitation: at SNR 8 the pipeline's own registrations would be
noisier too).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ants
import nibabel as nb
import numpy as np
import pandas as pd

from nmbids.acquisitions import DEFAULT_REF_STAT, NM_N4_SPLINE_MM, PROFILES
from nmbids.measures import icc_2_1
from nmbids.roi_measures import Grid, measure_rois, qc_snr
from nmbids.registration import align_repeats, inferior_first, n4_field, push_nm_to_template

from . import stats as st
from .measure import coverage_of, session_files, truth_acqs

SNRS = (8.0, 14.0, 25.0, 40.0)  # per repeat, in white matter
REPEATS = (1, 2, 3)
BASE_SNR = 25.0
# The estimators compared: (acquisition, ROI) -> measures of the table. ``cr`` is the
# profile's default; the second is the brightest-voxel method; ``cr_neighbour_top_volume`` the
# neighbour choice that GRE-MT SN's SIMEX default corrects, ``cr_neighbour_max_per_slice`` the
# in-plane choice that GRE-MT LC's box default replaced.
COMPARED = {("GREMT", "SN"): ("cr", "cr_top_volume", "cr_roimean", "cr_neighbour_top_volume"),
            ("GREMT", "VTA"): ("cr", "cr_top_volume", "cr_roimean"),
            ("GREMT", "LC"): ("cr", "cr_max_per_slice", "cr_neighbour_max_per_slice"),
            ("FSE", "SN"): ("cr", "cr_top_volume", "cr_roimean"),
            ("FSE", "VTA"): ("cr", "cr_top_volume", "cr_roimean"),
            ("FSE", "LC"): ("cr", "cr_max_per_slice")}
# Goals of the issue for SN CR (and LC on FSE at its usual SNR)
RATIO_BAND = (0.75, 1.15)


def cohort(nuclei: str, n_subjects: int = 5, seed: int = 300) -> dict:
    """``simulate_dataset`` keyword arguments of the sweep's cohort (without ``snr``)."""
    return dict(n_subjects=n_subjects, seed=seed, acq=("gremt", "fse"), nuclei=nuclei, t1w_res=1.5,
                nm_inplane=0.5, nm_slice=1.5, nm_slices=27, nm_fov=(110.0, 120.0), repeats=max(REPEATS),
                sessions=2)


def simulate_level(root: Path, kwargs: dict, snr: float) -> Path:
    """The cohort at one SNR, under ``root/snr-<snr>`` (kept when already there)."""
    from nmbids.phantom import simulate_dataset

    d = root / f"snr-{snr:g}"
    if not (d / "truth.json").exists():
        kw = dict(kwargs)
        n, seed = kw.pop("n_subjects"), kw.pop("seed")
        simulate_dataset(d, n_subjects=n, seed=seed, overwrite=True, snr=snr, **kw)
    return d


def _repeats(root: Path, acq: dict) -> list:
    out = []
    for src in acq["sources"]:
        img = ants.image_read(str(Path(root) / "bids" / src))
        out += ants.ndimage_to_list(img) if img.dimension == 4 else [img]
    return out


def measure_level(base_out: Path, level_root: Path, snr: float, meas: pd.DataFrame) -> list[dict]:
    """Every (subject, session, NM image, number of repeats) of one SNR level, measured as the
    pipeline measures (native and template grids, the profile's methods), on the base run's
    ROIs and transforms. Rows: the measures table's roi/hemi/measure/method/value, plus
    ``snr`` (per repeat, nominal), ``n_repeats`` and ``qc_snr`` (the QC table's SNR)."""
    truth = json.loads((level_root / "truth.json").read_text())
    rows = []
    for sub, ses, acq in truth_acqs(truth):
        acq_type = acq["acq_type"]
        if acq_type not in ("GREMT", "FSE"):
            continue
        f = session_files(base_out, sub, ses, acq_type)
        table = pd.read_csv(f["atlas_table"], sep="\t")
        cov = coverage_of(meas[(meas.participant_id == sub) & (meas.session_id == ses)], acq_type)
        dseg = np.asanyarray(nb.load(str(f["dseg"])).dataobj).astype(int)
        atlas = ants.image_read(str(f["atlas"]))
        atlas_arr = atlas.numpy().astype(int)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(atlas_arr))
        xfm = {"affine": str(f["affine"]), "warp": str(f["warp"]), "invwarp": str(f["invwarp"])}
        repeats = _repeats(level_root, acq)
        profile = PROFILES[acq_type]
        with tempfile.TemporaryDirectory() as tmp:
            aligned = align_repeats(repeats, f"{tmp}/rep_")[0]  # each repeat once; the means below
        for k in REPEATS:
            mean = repeats[0].new_image_like(np.mean(aligned[:k], axis=0).astype(np.float32))
            field = np.maximum(n4_field(mean, spline_mm=NM_N4_SPLINE_MM).numpy(), 1e-6)
            nm = mean.new_image_like((mean.numpy() / field).astype(np.float32))
            if nm.shape != dseg.shape:
                raise ValueError(f"{sub} {ses} {acq_type}: NM {nm.shape} and ROIs {dseg.shape} grids differ")
            in_template = None
            if any(profile.space_of(roi) == "template" for roi in profile.references):
                ones = nm.new_image_like(np.ones(nm.shape, np.float32))
                slab = push_nm_to_template(ones, atlas, xfm, str(f["rigid"])).numpy() > 0.5
                tnm = np.where(slab, push_nm_to_template(nm, atlas, xfm, str(f["rigid"])).numpy(), np.nan)
                in_template = Grid(tnm[box], atlas_arr[box], float(np.prod(atlas.spacing)), inferior_first(atlas))
            res, refs = measure_rois(Grid(nm.numpy(), dseg, float(np.prod(nm.spacing)), inferior_first(nm)),
                                in_template, table, cov, profile, DEFAULT_REF_STAT)
            q = qc_snr(refs, profile.map_reference)
            for r in res:
                if r["measure"].startswith("cr") and r["roi"] in ("SN", "VTA", "LC"):
                    rows.append(dict(sub=sub, ses=ses, acq_type=acq_type, snr=snr, n_repeats=k, roi=r["roi"],
                                     hemi=r["hemi"], measure=r["measure"], method=r["method"], space=r["space"],
                                     value=r["value"], qc_snr=q))
    return rows


def with_truth(rows: pd.DataFrame, truth: dict) -> pd.DataFrame:
    true = [dict(sub=sub, ses=ses, acq_type=a["acq_type"], roi=roi, hemi=h, true=a["cr"][roi][h])
            for sub, ses, a in truth_acqs(truth) if "cr" in a for roi in a["cr"] for h in a["cr"][roi]]
    return rows.merge(pd.DataFrame(true), on=["sub", "ses", "acq_type", "roi", "hemi"], how="left")


def summary(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per acquisition, ROI, measure, SNR and number of repeats, over the hemispheres (L, R)
    of every subject and session: bias (mean measured - true), ratio (median of measured /
    true), slope and r against the truth, and the test-retest ICC(2,1) of the hemispheres
    across the two sessions; plus the median QC SNR of the images."""
    out = []
    keep = sweep[sweep.hemi.isin(["L", "R"]) & sweep.roi.isin(["SN", "VTA", "LC"])]
    for (acq, roi, measure, snr, k), g in keep.groupby(["acq_type", "roi", "measure", "snr", "n_repeats"]):
        if measure not in COMPARED.get((acq, roi), ()):
            continue
        rec = st.recovery(g.value.to_numpy(float), g.true.to_numpy(float))
        ratio = (g.value / g.true).replace([np.inf, -np.inf], np.nan).dropna()
        w = g.pivot_table(index=["sub", "hemi"], columns="ses", values="value", aggfunc="first").dropna()
        icc = icc_2_1(w.to_numpy()) if w.shape[0] >= 2 and w.shape[1] == 2 else np.nan
        out.append(dict(acquisition=acq, roi=roi, measure=measure, method=g.method.iloc[0], snr=snr,
                        n_repeats=k, n=rec["n"], bias=rec["bias"], ratio=float(ratio.median()) if len(ratio) else np.nan,
                        slope=rec["slope"], r=rec["r"], icc=icc, qc_snr=float(g.qc_snr.median())))
    return pd.DataFrame(out)


def goals(s: pd.DataFrame) -> list[str]:
    """The issue's goals for SN CR (and FSE LC), checked on the default method."""
    lines = []
    for acq, roi in (("GREMT", "SN"), ("FSE", "SN"), ("FSE", "LC"), ("GREMT", "LC")):
        g = s[(s.acquisition == acq) & (s.roi == roi) & (s.measure == "cr")]
        if not len(g):
            continue
        lo, hi = g.ratio.min(), g.ratio.max()
        spread = g.groupby("n_repeats").ratio.agg(lambda x: x.max() - x.min()).max()
        r14 = g[g.snr >= 14].r.min()
        icc = g.icc.min()
        ok = RATIO_BAND[0] <= lo and hi <= RATIO_BAND[1]
        lines.append(f"- {acq} {roi} CR ({g.method.iloc[0]}): measured/true {lo:.2f}–{hi:.2f} over every SNR and "
                     f"number of repeats ({'inside' if ok else 'outside'} {RATIO_BAND[0]}–{RATIO_BAND[1]}); "
                     f"largest difference between SNR levels {spread:.2f} (goal ≤ 0.10); "
                     f"r ≥ {r14:.2f} at SNR ≥ 14 (goal 0.9); ICC ≥ {icc:.2f} (goal 0.9).")
    return lines


def figure(s: pd.DataFrame, path: Path) -> None:
    """Measured/true against SNR per repeat: the default CR against the brightest-voxel CR
    (and, for GRE-MT SN and LC, the in-plane neighbour choice their default refines), one panel per
    acquisition and ROI, one line per number of repeats."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in COMPARED if len(s[(s.acquisition == k[0]) & (s.roi == k[1])])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels) + 0.5, 2.6), squeeze=False)
    for ax, (acq, roi) in zip(axes[0], panels):
        g = s[(s.acquisition == acq) & (s.roi == roi)]
        lines = [("cr", "-", "default"), (COMPARED[(acq, roi)][1], "--", "brightest")]
        lines += [(x, ":", "in-plane neighbours") for x in COMPARED[(acq, roi)][2:] if x.startswith("cr_neighbour_")]
        for measure, style, name in lines:
            for k, color in zip(REPEATS, ("#d95f02", "#7570b3", "#1b9e77")):
                h = g[(g.measure == measure) & (g.n_repeats == k)].sort_values("snr")
                ax.plot(h.snr, h.ratio, style, color=color, marker="o", ms=3, label=f"{name}, {k} rep.")
        ax.axhspan(*RATIO_BAND, color="0.9", zorder=0)
        ax.axhline(1, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(SNRS, [f"{x:g}" for x in SNRS])
        ax.set_title(f"{acq} {roi}", fontsize=9)
        ax.set_xlabel("SNR per repeat")
    axes[0, 0].set_ylabel("measured / true CR")
    axes[0, -1].legend(frameon=False, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
