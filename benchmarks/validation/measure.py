"""Reading nmbids outputs of phantom cohorts, matching them with truth.json, and measuring
again from the written images (other reference statistics and CR methods, template space,
a deliberately shifted NM -> T1w transform, other bias fields) with the functions the
pipeline itself calls (``nmbids.registration``, ``nmbids.roi_measures.measure_rois`` and ``measure_grid``)."""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import ants
import nibabel as nb
import numpy as np
import pandas as pd

from nmbids import measures as m
from nmbids.acquisitions import DEFAULT_REF_STAT, PROFILES, REF_STATS
from nmbids.roi_measures import Grid, measure_grid, measure_rois
from nmbids.registration import inferior_first, n4_field, realign_repeats

from .stats import centroid_mm, shift_directions, shifted_rigid

ACQ_LABEL = {"GREMT": "NM", "FSE": "FSE", "MTR": "MTR"}
TARGETS = ("SN", "VTA", "LC")
TRUTH_KEY = {"cr": "cr", "cr_roimean": "cr", "cr_threshold": "cr", "mtr": "mtr", "mtr_roimean": "mtr",
             "mtr_threshold": "mtr", "volume_mm3": "volume_mm3"}
METHODS = ("roi_mean", "threshold", "top_volume", "max_per_slice", "neighbour_top_volume", "neighbour_max_per_slice",
           "box_neighbour_max_per_slice", "simex_neighbour_top_volume")
# N4 B-spline control-point spacings compared on the NM slab (mm; None: one mesh element)
N4_SPACINGS = (None, 200.0, 100.0, 50.0)


def spacing_label(spline_mm: float | None) -> str:
    return "one element" if spline_mm is None else f"{spline_mm:g} mm"


def read_table(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values={"value": ["n/a"]}, keep_default_na=False)


def load_measures(out: Path) -> pd.DataFrame:
    files = sorted(Path(out).glob("sub-*/**/*_desc-nm_measures.tsv"))
    if not files:
        return pd.DataFrame(columns=["participant_id", "session_id", "acq_type", "roi", "hemi",
                                     "measure", "value"])
    return pd.concat([read_table(f) for f in files], ignore_index=True)


def truth_acqs(truth: dict):
    """Yield (sub, ses, acq dict) for every acquisition of the truth."""
    for sub, t in truth["subjects"].items():
        for ses, st in t["sessions"].items():
            for a in st["acquisitions"]:
                yield sub, ses, a


def pairs(truth: dict, meas: pd.DataFrame) -> pd.DataFrame:
    """Long table of (measured, true) for every subject, session, acquisition, target ROI,
    hemisphere (L, R) and measure with a truth (CR measures, MTR measures, volume)."""
    rows = []
    idx = meas.set_index(["participant_id", "session_id", "acq_type", "roi", "hemi", "measure"])["value"]
    idx = idx[~idx.index.duplicated()]
    for sub, ses, a in truth_acqs(truth):
        for measure, key in TRUTH_KEY.items():
            if key not in a:
                continue
            for roi in TARGETS:
                for hemi in ("L", "R", "bilateral"):
                    true = a[key].get(roi, {}).get(hemi)
                    k = (sub, ses, a["acq_type"], roi, hemi, measure)
                    if true is None or k not in idx.index:
                        continue
                    rows.append(dict(sub=sub, ses=ses, acq_type=a["acq_type"], roi=roi, hemi=hemi,
                                     measure=measure, est=float(idx[k]), true=float(true)))
    return pd.DataFrame(rows)


def anat_dir(out: Path, sub: str, ses: str) -> Path:
    return Path(out) / sub / ("anat" if ses == "n/a" else f"{ses}/anat")


def _one(folder: Path, pattern: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if len(hits) != 1:
        raise FileNotFoundError(f"{folder}/{pattern}: {len(hits)} matches")
    return hits[0]


def atlas_image(out: Path) -> Path:
    """The run's atlas label image, ``OUTPUT_DIR/atlas/tpl-<space>_atlas-nmbids_dseg.nii.gz``."""
    return _one(Path(out) / "atlas", "tpl-*_atlas-nmbids_dseg.nii.gz")


def atlas_table(out: Path) -> pd.DataFrame:
    """The label table beside the run's atlas image."""
    return pd.read_csv(atlas_image(out).with_suffix("").with_suffix(".tsv"), sep="\t")


def session_files(out: Path, sub: str, ses: str, acq_type: str) -> dict:
    """Paths of the outputs of one NM source and its session."""
    d = anat_dir(out, sub, ses)
    a = f"*_acq-{ACQ_LABEL[acq_type]}_"
    atlas = atlas_image(out)
    space = atlas.name.split("_")[0][len("tpl-"):]
    return {
        "nm": _one(d, f"{a}desc-preproc_NM.nii.gz"),
        "dseg": _one(d, f"{a}desc-rois_dseg.nii.gz"),
        "rigid": _one(d, f"{a}from-NM_to-T1w_mode-image_xfm.mat"),
        "nm_tpl": _one(d, f"{a}space-{space}_desc-preproc_NM.nii.gz"),
        "crmap": _one(d, f"{a}space-{space}_crmap.nii.gz"),
        "affine": _one(d, f"*_from-T1w_to-{space}_mode-image_desc-affine_xfm.mat"),
        "warp": _one(d, f"*_from-T1w_to-{space}_mode-image_desc-warp_xfm.nii.gz"),
        "invwarp": _one(d, f"*_from-{space}_to-T1w_mode-image_desc-warp_xfm.nii.gz"),
        "atlas": atlas,
        "atlas_table": atlas.with_suffix("").with_suffix(".tsv"),
        "measures": _one(d, "*_desc-nm_measures.tsv"),
    }


def coverage_of(meas: pd.DataFrame, acq_type: str) -> dict:
    c = meas[(meas.acq_type == acq_type) & (meas.measure == "coverage")]
    return {(r.roi, r.hemi): float(r.value) for r in c.itertuples()}


def _inferior_first(nii) -> bool:
    # ANTs: direction[:, 2][2] >= 0 (LPS); in RAS the z row of the affine has the same sign
    return float(nii.affine[2, 2]) >= 0


def _profile(acq_type: str, method: str | None):
    p = PROFILES[acq_type]
    if method is None:
        return p
    return dataclasses.replace(p, cr_method={roi: method for roi in p.references})


def measure_variants(nm: np.ndarray, dseg: np.ndarray, table: pd.DataFrame, coverage: dict,
                     acq_type: str, voxel_volume: float, inferior_first: bool,
                     stats=REF_STATS, methods=METHODS) -> list[dict]:
    """CR of every target ROI and hemisphere for each reference statistic and CR method,
    computed by ``nmbids.roi_measures.measure_grid`` with the acquisition's profile (the method
    swapped in).  Rows: stat, method, roi, hemi, value (also ``default`` rows: the profile's
    own ``cr`` and ``volume_mm3``)."""
    rows = []
    for stat in stats:
        for method in (None,) + tuple(methods):
            out, _ = measure_grid(nm, dseg, table, coverage, _profile(acq_type, method), stat, voxel_volume,
                              slice_axis=2, inferior_first=inferior_first)
            for r in out:
                if r["roi"] not in TARGETS:
                    continue
                if method is None and r["measure"] in ("cr", "volume_mm3"):
                    rows.append(dict(stat=stat, method="default" if r["measure"] == "cr" else "volume_mm3",
                                     roi=r["roi"], hemi=r["hemi"], value=r["value"]))
                elif method is not None and r["measure"] == "cr":
                    rows.append(dict(stat=stat, method=method, roi=r["roi"], hemi=r["hemi"], value=r["value"]))
    return rows


def native_and_template(out: Path, sub: str, ses: str, acq_type: str, meas: pd.DataFrame) -> list[dict]:
    """All variants in native NM space, and default-statistic/default-method CR in template space."""
    f = session_files(out, sub, ses, acq_type)
    table = pd.read_csv(f["atlas_table"], sep="\t")
    cov = coverage_of(meas[(meas.participant_id == sub) & (meas.session_id == ses)], acq_type)
    nii = nb.load(str(f["nm"]))
    nm = np.asanyarray(nii.dataobj).astype(np.float32)
    dseg = np.asanyarray(nb.load(str(f["dseg"])).dataobj).astype(int)
    vox = float(np.prod(nii.header.get_zooms()[:3]))
    rows = [dict(space="native", **r) for r in
            measure_variants(nm, dseg, table, cov, acq_type, vox, _inferior_first(nii))]
    tnii = nb.load(str(f["nm_tpl"]))
    tnm = np.asanyarray(tnii.dataobj).astype(np.float32)
    crmap = np.asanyarray(nb.load(str(f["crmap"])).dataobj)
    tnm = np.where(np.isfinite(crmap), tnm, np.nan)  # outside the slab: n/a
    atlas = np.asanyarray(nb.load(str(f["atlas"])).dataobj).astype(int)
    if atlas.shape != tnm.shape:
        raise ValueError(f"template atlas {atlas.shape} and template NM {tnm.shape} differ")
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(atlas))  # the atlas's extent
    tnm, atlas = tnm[box], atlas[box]
    tvox = float(np.prod(tnii.header.get_zooms()[:3]))
    rows += [dict(space="template", **r) for r in
             measure_variants(tnm, atlas, table, cov, acq_type, tvox, _inferior_first(tnii),
                              stats=(DEFAULT_REF_STAT,), methods=("roi_mean", "threshold", "top_volume", "neighbour_top_volume"))]
    return [dict(sub=sub, ses=ses, acq_type=acq_type, **r) for r in rows]


def oracle_cr(out: Path, root: Path, sub: str, ses: str, acq: dict, meas: pd.DataFrame,
              core: float = 0.9) -> list[dict]:
    """CR of the true nucleus: the mean over the voxels that the truth puts at least ``core``
    inside the nucleus (``*_desc-truth_probseg``, on the native NM grid), against the
    reference value the pipeline wrote. What a perfect ROI would measure on the same images
    with the same reference: what the images themselves (noise, bias field, partial volume)
    leave of the reliability."""
    f = session_files(out, sub, ses, acq["acq_type"])
    profile = PROFILES[acq["acq_type"]]
    nm = np.asanyarray(nb.load(str(f["nm"])).dataobj).astype(np.float32)
    prob = np.asanyarray(nb.load(str(Path(root) / acq["truth_probseg"])).dataobj)
    if prob.shape[:3] != nm.shape:
        raise ValueError(f"truth probseg {prob.shape[:3]} and NM {nm.shape} grids differ")
    mine = meas[(meas.participant_id == sub) & (meas.session_id == ses) & (meas.acq_type == acq["acq_type"])
                & (meas.measure == "reference_value")]
    refs = {r.roi: float(r.value) for r in mine.itertuples()}
    rows = []
    for k, roi in enumerate(TARGETS):
        ref = refs.get(profile.references[roi], np.nan)
        masks = {"L": prob[..., 2 * k] >= core, "R": prob[..., 2 * k + 1] >= core}
        masks["bilateral"] = masks["L"] | masks["R"]
        for hemi, mask in masks.items():
            rows.append(dict(sub=sub, ses=ses, acq_type=acq["acq_type"], roi=roi, hemi=hemi,
                             n_voxels=int(mask.sum()), value=m.cr_roimean(nm[mask], ref)))
    return rows


def bias_correction(out: Path, root: Path, sub: str, ses: str, acq: dict, meas: pd.DataFrame,
                    spacings=N4_SPACINGS) -> list[dict]:
    """The NM slab's N4 field at several control-point spacings against the phantom's true
    field (``truth_biasfield``).

    The repeats are realigned and averaged again from the raw images as the pipeline does
    (``realign_repeats``), then divided by each N4 field (``n4_field(spline_mm=...)``) or by
    the true field, and measured by ``measure_grid`` with the acquisition's profile and the
    pipeline's ROIs. Rows per field and ROI (SN, LC; bilateral): ``field_error`` = mean of
    estimated/true field over the ROI divided by its median over the ROI's reference region,
    minus 1 (the relative error the field leaves in the ROI-to-reference ratio), and ``value``
    = the ROI's CR."""
    if not acq.get("truth_biasfield"):
        raise KeyError("truth_biasfield (a phantom simulated without a bias field, or before it was recorded)")
    acq_type = acq["acq_type"]
    profile = PROFILES[acq_type]
    f = session_files(out, sub, ses, acq_type)
    table = pd.read_csv(f["atlas_table"], sep="\t")
    cov = coverage_of(meas[(meas.participant_id == sub) & (meas.session_id == ses)], acq_type)
    dseg = np.asanyarray(nb.load(str(f["dseg"])).dataobj).astype(int)
    true_field = np.asanyarray(nb.load(str(Path(root) / acq["truth_biasfield"])).dataobj).astype(np.float32)
    repeats = []
    for src in acq["sources"]:
        img = ants.image_read(str(Path(root) / "bids" / src))
        repeats += ants.ndimage_to_list(img) if img.dimension == 4 else [img]
    with tempfile.TemporaryDirectory() as tmp:
        mean = realign_repeats(repeats, f"{tmp}/rep_")[0] if len(repeats) > 1 else repeats[0]
    raw = mean.numpy()
    if raw.shape != dseg.shape or true_field.shape != dseg.shape:
        raise ValueError(f"NM {raw.shape}, ROIs {dseg.shape} and true field {true_field.shape} grids differ")
    fields = {"true field": true_field}
    fields.update({spacing_label(s): n4_field(mean, spline_mm=s).numpy() for s in spacings})
    vox, first = float(np.prod(mean.spacing)), inferior_first(mean)  # the grid of repeat 1, as the pipeline's
    rows = []
    for label, est in fields.items():
        res, _ = measure_grid(raw / np.maximum(est, 1e-6), dseg, table, cov, profile, DEFAULT_REF_STAT, vox,
                          slice_axis=2, inferior_first=first)
        cr = {r["roi"]: r["value"] for r in res if r["measure"] == "cr" and r["hemi"] == "bilateral"}
        q = est / true_field
        for roi in ("SN", "LC"):
            in_roi = np.isin(dseg, table.loc[table.roi == roi, "index"])
            in_ref = np.isin(dseg, table.loc[table.roi == profile.references[roi], "index"])
            rows.append(dict(sub=sub, ses=ses, acq_type=acq_type, field=label, roi=roi, hemi="bilateral",
                             field_error=float(q[in_roi].mean() / np.median(q[in_ref]) - 1),
                             value=cr.get(roi, np.nan)))
    return rows


def lc_localisation(out: Path, root: Path, sub: str, ses: str, acq: dict) -> list[dict]:
    """Centroid of the LC voxels the pipeline finds (threshold-passing voxels of the LC ROI
    in native NM space) against the centroid of the truth LC label, per hemisphere (mm)."""
    acq_type = acq["acq_type"]
    profile = PROFILES[acq_type]
    f = session_files(out, sub, ses, acq_type)
    table = pd.read_csv(f["atlas_table"], sep="\t")
    nii = nb.load(str(f["nm"]))
    nm = np.asanyarray(nii.dataobj).astype(np.float32)
    dseg = np.asanyarray(nb.load(str(f["dseg"])).dataobj).astype(int)
    ref_idx = table.loc[table.roi == profile.references["LC"], "index"]
    ref_vals = nm[np.isin(dseg, ref_idx)]
    ref = m.reference_value(ref_vals, DEFAULT_REF_STAT, min_voxels=profile.min_voxels)
    sd = float(np.nanstd(ref_vals, ddof=1)) if ref_vals.size > 1 else float("nan")
    tnii = nb.load(str(Path(root) / acq["truth_dseg"]))
    tdseg = np.asanyarray(tnii.dataobj).astype(int)
    rows = []
    for hemi, label in (("L", 5), ("R", 6)):
        idx = table.loc[(table.roi == "LC") & (table.hemi == hemi), "index"]
        roi = np.isin(dseg, idx)
        found = roi.copy()
        found[roi] = m.threshold_mask(nm[roi], ref, sd, profile.threshold_k)
        c_found = centroid_mm(found, nii.affine)
        c_roi = centroid_mm(roi, nii.affine)
        c_true = centroid_mm(tdseg == label, tnii.affine)
        rows.append(dict(sub=sub, ses=ses, acq_type=acq_type, hemi=hemi, n_found=int(found.sum()),
                         error_mm=float(np.linalg.norm(c_found - c_true)),
                         search_region_error_mm=float(np.linalg.norm(c_roi - c_true)),
                         dx=float(c_found[0] - c_true[0]), dy=float(c_found[1] - c_true[1]),
                         dz=float(c_found[2] - c_true[2])))
    return rows


def misregistration(out: Path, sub: str, ses: str, acq_type: str, meas: pd.DataFrame,
                    shifts_mm=(0.0, 1.0, 2.0, 3.0)) -> list[dict]:
    """Default CR after adding a translation of each size along x, y and z (ANTs physical
    space) to the NM -> T1w rigid: the atlas is pulled into NM space through the shifted
    transform (``nmbids.registration.pull_atlas_to_nm``) and measured again (default reference statistic,
    the profile's methods). Shift 0 also reports how many voxels of the written ROI image it
    reproduces (``same_labels``)."""
    import ants

    from nmbids.registration import pull_atlas_to_nm, push_nm_to_template

    f = session_files(out, sub, ses, acq_type)
    table = pd.read_csv(f["atlas_table"], sep="\t")
    cov = coverage_of(meas[(meas.participant_id == sub) & (meas.session_id == ses)], acq_type)
    nm_img = ants.image_read(str(f["nm"]))
    atlas = ants.image_read(str(f["atlas"]))
    atlas_arr = atlas.numpy().astype(int)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(atlas_arr))
    ones = nm_img.new_image_like(np.ones(nm_img.shape, np.float32))
    tvox = float(np.prod(atlas.spacing))
    xfm = {"affine": str(f["affine"]), "warp": str(f["warp"]), "invwarp": str(f["invwarp"])}
    rigid = ants.read_transform(str(f["rigid"]))
    base = np.asarray(rigid.parameters, float)
    nii = nb.load(str(f["nm"]))
    nm = np.asanyarray(nii.dataobj).astype(np.float32)
    written = np.asanyarray(nb.load(str(f["dseg"])).dataobj).astype(int)
    vox = float(np.prod(nii.header.get_zooms()[:3]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in shifts_mm:
            dirs = {"none": np.zeros(3)} if size == 0 else shift_directions()
            for name, unit in dirs.items():
                tx = ants.read_transform(str(f["rigid"]))
                tx.set_parameters(shifted_rigid(base, unit * size))
                path = str(Path(tmp) / f"rigid_{name}_{size:g}.mat")
                ants.write_transform(tx, path)
                dseg = pull_atlas_to_nm(atlas, nm_img, xfm, path).numpy().astype(int)
                same = float(np.mean(dseg == written)) if size == 0 else float("nan")
                # ROIs measured in template space see the NM image pushed through the shifted rigid
                slab = push_nm_to_template(ones, atlas, xfm, path).numpy() > 0.5
                tnm = np.where(slab, push_nm_to_template(nm_img, atlas, xfm, path).numpy(), np.nan)
                res, _ = measure_rois(Grid(nm, dseg, vox, inferior_first(nm_img)),
                                 Grid(tnm[box], atlas_arr[box], tvox, inferior_first(atlas)),
                                 table, cov, PROFILES[acq_type], DEFAULT_REF_STAT)
                for r in res:
                    if r["measure"] == "cr" and r["roi"] in TARGETS and r["hemi"] in ("L", "R"):
                        rows.append(dict(sub=sub, ses=ses, acq_type=acq_type, shift_mm=size,
                                         direction=name, roi=r["roi"], hemi=r["hemi"], value=r["value"],
                                         same_labels=same))
    return rows


def truth_table(truth: dict) -> pd.DataFrame:
    """True CR/MTR/volume by sub, ses, acq_type, roi, hemi (for joining re-measured values)."""
    rows = []
    for sub, ses, a in truth_acqs(truth):
        for roi in TARGETS:
            for hemi in ("L", "R", "bilateral"):
                rows.append(dict(sub=sub, ses=ses, acq_type=a["acq_type"], roi=roi, hemi=hemi,
                                 true_cr=a.get("cr", {}).get(roi, {}).get(hemi, np.nan),
                                 true_volume=a.get("volume_mm3", {}).get(roi, {}).get(hemi, np.nan)))
    return pd.DataFrame(rows)


def load_truth(root: Path) -> dict:
    return json.loads((Path(root) / "truth.json").read_text())
