"""The truth: what was put into the phantom, as recorded in ``OUT/truth.json`` and the truth labels.

The true CR, MTR, native nucleus volumes and slab coverage of every acquisition, the transforms
and draws that made each image, and the truth label image (``truth_dseg``). The definition of
the truth (``DEFINITION``, also written into truth.json) and the file's schema are in the
package docstring (``nmbids.phantom``, "Definition of the truth" and "truth.json").
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .. import __version__
from .acquisition import ACQ_TYPES
from .anatomy import DEFORM_SIGMA_MM, DEFORM_SPACING_MM
from .contrast import ACQ_CR_SCALE, CONTRASTS, MT_OFF_NUCLEUS_CR, MTR_TISSUE, REF_TISSUE, ref_tissue
from .geometry import apply
from .regions import HEMIS, LABELS, NUCLEI, REFERENCE, ROIS
from .writer import GENERATOR

DEFINITION = (
    "CR_true = I_nucleus / I_ref - 1, where I_nucleus is the signal of the points inside the "
    "nucleus and I_ref the signal of its reference tissue (crus cerebri = white matter for SN "
    "and VTA, pontine tegmentum for LC) in the noise-free, bias-free, infinitely resolved object; "
    "both are constant by construction. The phantom makes the reference regions (the pipeline's "
    "CC and PT ellipsoids enlarged by 2 mm) homogeneous reference tissue. Voxels wholly inside a "
    "nucleus (probseg == 1) over reference-core voxels (dseg 7-9) of a --noise-free image give "
    "CR_true exactly. 'bilateral' = mean of L and R weighted by native volume (for volumes: L + R). "
    "Volumes are native scanner-space mm3. MTR = 100 (off - on) / off of the noise-free signals."
)
UNITS = {"cr": "ratio", "mtr": "percent", "volume_mm3": "mm3", "motion_mm": "mm",
         "reference_value": "a.u. (image units, before bias and noise)"}


def bilateral(vals: dict[str, float], vols: dict[str, float]) -> float:
    """Mean of L and R weighted by volume."""
    w = vols["L"] + vols["R"]
    return float((vals["L"] * vols["L"] + vals["R"] * vols["R"]) / w) if w > 0 else float("nan")


def _r(x: float, nd: int = 6):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def truth_header(opts, n_subjects: int, seed: int, tm, nuclei_source: str, sites: dict) -> dict:
    """Everything in truth.json but the subjects (``"subjects"`` is left empty)."""
    args = asdict(opts)
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}
    args.update(n=n_subjects, seed=seed)
    return {
        "generator": GENERATOR, "version": __version__, "seed": seed, "args": args,
        "template": {"name": tm.name, "source": tm.source},
        "nuclei_source": nuclei_source,
        "definition": DEFINITION,
        "units": UNITS,
        "labels": {str(k): n for k, n in LABELS.items()},
        "reference": dict(REFERENCE),
        "contrasts": {k: {t: round(v, 6) for t, v in w.items()} for k, w in CONTRASTS.items()},
        "acq_cr_scale": ACQ_CR_SCALE,
        "sites": sites,
        "subjects": {},
    }


def nucleus_volumes(nuclei, deform, A):
    """Template volume (mm3) per nucleus, and per nucleus its points in ``q`` (template-affine
    coordinates) with the native volume each stands for (through the Jacobian of phi and A)."""
    vols_tpl, cache = {}, {}
    for name in NUCLEI:
        pts, dv = nuclei.points(name)
        q = deform.inverse(pts)
        det = deform.det_jacobian(q) * np.linalg.det(A[:3, :3])
        w = dv / np.abs(det)
        vols_tpl[name] = float(pts.shape[1] * dv)
        cache[name] = (q, w)
    return vols_tpl, cache


def subject_entry(group, age, sex, site, cr, vols_tpl, vcache, vol_scale) -> dict:
    """A subject's truth.json entry, without its sessions (``"sessions"`` is left empty)."""
    native = {n: float(vcache[n][1].sum()) for n in NUCLEI}
    entry = {
        "group": group, "age": age, "sex": sex, "site": site,
        "cr_gremt": {roi: {h: _r(cr[roi][h]) for h in HEMIS}
                     | {"bilateral": _r(bilateral(cr[roi], {h: native[f"{roi}_{h}"] for h in HEMIS}))}
                     for roi in ROIS},
        "volume_template_mm3": {roi: {h: _r(vols_tpl[f"{roi}_{h}"], 3) for h in HEMIS} for roi in ROIS},
        "sessions": {},
    }
    if vol_scale:
        entry["volume_scale"] = {k: _r(v) for k, v in vol_scale.items()}
    return entry


def session_entry(A, deform, t1w_source: str, opts) -> dict:
    """A session's truth.json entry, without its acquisitions (``"acquisitions"`` left empty)."""
    return {
        "subject_to_template_affine": [[_r(x, 8) for x in row_] for row_ in A],
        "deformation": {"max_mm": _r(deform.max_mm, 4), "rms_mm": _r(deform.rms_mm, 4),
                        "sigma_mm": DEFORM_SIGMA_MM, "grid_spacing_mm": DEFORM_SPACING_MM,
                        "model": "t = q + u(q), q = A s; u trilinear on the grid"},
        "t1w": {"source": t1w_source, "res_mm": opts.t1w_res,
                "snr": None if opts.noise_free else opts.t1w_snr},
        "acquisitions": [],
    }


def truth_dseg(fractions: np.ndarray, refcore: np.ndarray, shape) -> np.ndarray:
    """Labels 1-6 where at least half of a voxel is that nucleus, 7-9 on reference-core voxels."""
    dseg = np.zeros(shape, np.uint8).reshape(-1)
    best = fractions.argmax(1)
    has = fractions.max(1) >= 0.5
    dseg[has] = best[has] + 1
    dseg[refcore > 0] = refcore[refcore > 0]
    return dseg.reshape(shape)


def acquisition_entry(nm, sources: list[str], vcache, A, truth_files) -> dict:
    """One NM acquisition's truth.json entry (``nm``: an ``acquisition.NMAcquisition``;
    ``truth_files``: the dseg, probseg and bias-field paths relative to OUT)."""
    slab = nm.slab
    s0 = nm.s0
    acq_cr = nm.acq_cr
    # volumes and coverage (native, through the exact inverse map)
    inv_slab = np.linalg.inv(slab.affine)
    vols, cov = {}, {}
    for name in NUCLEI:
        q, w = vcache[name]
        idx = apply(inv_slab @ np.linalg.inv(A), q)
        inside = np.all((idx >= -0.5) & (idx <= np.asarray(slab.shape)[:, None] - 0.5), axis=0)
        vols[name] = float(w.sum())
        cov[name] = float(w[inside].sum() / w.sum()) if w.sum() > 0 else 0.0
    volume = {roi: {h: _r(vols[f"{roi}_{h}"], 3) for h in HEMIS}
              | {"bilateral": _r(vols[f"{roi}_L"] + vols[f"{roi}_R"], 3)} for roi in ROIS}
    rv = {roi: {h: vols[f"{roi}_{h}"] for h in HEMIS} for roi in ROIS}
    cr_out = {roi: {h: _r(acq_cr[roi][h]) for h in HEMIS}
              | {"bilateral": _r(bilateral(acq_cr[roi], rv[roi]))} for roi in ROIS}
    w_main = CONTRASTS[nm.contrasts[0]]
    entry = {
        "source": sources[0], "sources": sources, "acq_type": ACQ_TYPES[nm.acq],
        "snr": _r(nm.snr, 4), "n_repeats": nm.n_repeats,
        "motion_mm": [_r(m, 4) for m in nm.motion_mm],
        "motion_params": [[_r(x, 4) for x in p] for p in nm.motion_params],
        "motion_affines": [[[_r(x, 8) for x in row] for row in M] for M in nm.motions],
        "motion_center_scanner_mm": [_r(x, 4) for x in slab.center],
        "slab_tilt_deg": _r(slab.tilt_deg, 4),
        "slab_center_scanner_mm": [_r(x, 4) for x in slab.center],
        "inplane_mm": slab.inplane, "slice_mm": slab.slice_mm, "n_slices": slab.shape[2],
        "intensity_scale": _r(s0, 4),
        "reference_value": {reg: _r(s0 * w_main[t], 4) for reg, t in REF_TISSUE.items()},
        "cr": cr_out,
    }
    if nm.acq == "mtr":
        on, off = CONTRASTS["mt_on"], CONTRASTS["mt_off"]
        mtr = {}
        for roi in ROIS:
            key = ref_tissue(roi)
            per = {h: 100 * (1 - on[key] * (1 + acq_cr[roi][h]) / (off[key] * (1 + MT_OFF_NUCLEUS_CR)))
                   for h in HEMIS}
            mtr[roi] = {h: _r(per[h]) for h in HEMIS} | {"bilateral": _r(bilateral(per, rv[roi]))}
        mtr["CC"] = {h: _r(MTR_TISSUE[REF_TISSUE["CC"]]) for h in HEMIS + ("bilateral",)}
        mtr["PT"] = {"bilateral": _r(MTR_TISSUE[REF_TISSUE["PT"]])}
        entry["mtr"] = mtr
        entry["reference_value_mt_off"] = {reg: _r(s0 * off[t], 4) for reg, t in REF_TISSUE.items()}
    dseg_rel, prob_rel, bias_rel = truth_files
    entry["volume_mm3"] = volume
    entry["coverage"] = {roi: {h: _r(cov[f"{roi}_{h}"], 4) for h in HEMIS} for roi in ROIS}
    entry["truth_dseg"] = str(dseg_rel)
    entry["truth_probseg"] = str(prob_rel)
    entry["truth_biasfield"] = None if bias_rel is None else str(bias_rel)
    return entry
