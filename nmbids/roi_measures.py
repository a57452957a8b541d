"""From images on one grid to the rows of the measures table.

Arrays in, rows out: the science is in ``measures``; this module only decides which voxels
each measure sees (ROI, hemisphere, reference region) according to the acquisition profile.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import measures as m
from .acquisitions import MTR_NUCLEUS_METHOD, NEAREST_ONLY, NEIGHBOUR, NEIGHBOUR_BOX, SIMEX, AcquisitionProfile

HEMIS = ("L", "R", "bilateral")


def region_masks(dseg: np.ndarray, table: pd.DataFrame) -> dict:
    """``{(roi, hemi): bool mask}`` for every region, with ``bilateral`` = union of L and R."""
    masks = {}
    for roi, rows in table.groupby("roi", sort=False):
        union = np.zeros(dseg.shape, bool)
        for _, r in rows.iterrows():
            mask = dseg == int(r["index"])
            masks[(roi, r["hemi"])] = mask
            union |= mask
        masks[(roi, "bilateral")] = union
    return masks


@dataclass
class Grid:
    """An NM image, the region labels on the same grid, and what the measures need of the grid.

    NaN voxels of ``image`` are left out of every measure (outside the slab, fluid)."""

    image: np.ndarray
    labels: np.ndarray
    voxel_volume: float  # mm³
    inferior_first: bool = True  # the third axis runs inferior → superior (slice order)


def measure_rois(native: Grid, template: Grid | None, table: pd.DataFrame, coverage: dict,
            profile: AcquisitionProfile, ref_stat: str) -> tuple[list[dict], dict]:
    """The rows of every target ROI, each measured in the space its profile names
    (``profile.space_of``): on the native NM grid, or on the NM image in template space
    with the template's regions (``template``, needed only when a ROI is measured there).

    Returns ``(rows, refs)`` like ``measure_grid``; the reference rows and ``refs`` are the
    native ones (template-space ROIs use the template's reference regions, not repeated).
    """
    spaces = {roi: profile.space_of(roi) for roi in profile.references}
    rows, refs = measure_grid(native.image, native.labels, table, coverage, profile, ref_stat, native.voxel_volume,
                          inferior_first=native.inferior_first,
                          rois=[r for r, s in spaces.items() if s == "native"])
    in_template = [r for r, s in spaces.items() if s == "template"]
    if in_template:
        if template is None:
            raise ValueError(f"{profile.name}: {', '.join(in_template)} are measured in template space; "
                             "no template-space image was given")
        trows, _ = measure_grid(template.image, template.labels, table, coverage, profile, ref_stat,
                            template.voxel_volume, inferior_first=template.inferior_first,
                            rois=in_template, space="template")
        rows += [r for r in trows if r["measure"] != "reference_value"]
    return rows, refs


def measure_grid(nm: np.ndarray, dseg: np.ndarray, table: pd.DataFrame, coverage: dict,
             profile: AcquisitionProfile, ref_stat: str, voxel_volume: float,
             slice_axis: int = 2, inferior_first: bool = True, rois=None,
             space: str = "native") -> tuple[list[dict], dict]:
    """Measure the target ROIs ``rois`` of ``profile`` (default: all) on the NM image ``nm``.

    ``dseg`` labels ``nm``'s grid; voxels of ``nm`` that are NaN are left out of every
    measure. ``coverage`` maps ``(roi, hemi)`` to the fraction of the template ROI inside
    the slab. ``space`` ("native" or "template") is written in the rows. Returns
    ``(rows, refs)``: rows without the identifying columns (the reference regions' rows
    first), and the reference values by region name (for the voxelwise map and QC).
    """
    masks = region_masks(dseg, table)
    rows, refs = [], {}
    targets = {roi: ref for roi, ref in profile.references.items() if rois is None or roi in rois}

    def row(roi, hemi, measure, value, unit, method="n/a", reference="n/a", stat="n/a", where=space):
        value = float(value) if value is not None and np.isfinite(value) else None
        rows.append(dict(roi=roi, hemi=hemi, measure=measure, value=value, unit=unit,
                         method=method, space=where, reference=reference, ref_stat=stat))

    # Reference regions: pooled over both sides (a per-side reference would fold slab
    # tilt and bias into the left-right difference).
    ref_rois = sorted(set(profile.references.values()))
    none = np.zeros(nm.shape, bool)
    # whether adjacent voxels share their noise is a property of the image's reconstruction:
    # one neighbour distance for every score and noise estimate of the image
    ref_union = np.any([masks.get((r, "bilateral"), none) for r in ref_rois], axis=0)
    distance = m.neighbour_distance(nm, ref_union, slice_axis, profile.min_voxels)
    # and whether adjacent slices share it: the box score reaches across them only when not
    box_ok = any(_score_kind(method) == "box" for method in profile.cr_method.values()) \
        and not m.slices_share_noise(nm, ref_union, slice_axis, profile.min_voxels, distance)
    for ref_roi in ref_rois:
        values = nm[masks.get((ref_roi, "bilateral"), none)]
        ref = m.reference_value(values, ref_stat, min_voxels=profile.min_voxels)
        sd = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else float("nan")
        noise = m.noise_sd(nm, masks.get((ref_roi, "bilateral"), none), slice_axis, profile.min_voxels, distance)
        refs[ref_roi] = {"value": ref, "sd": sd, "noise_sd": noise, "neighbour_distance": distance,
                         "n": int(np.isfinite(values).sum()), "values": values}
        row(ref_roi, "bilateral", "reference_value", ref, "a.u.", "reference", "n/a", ref_stat)

    for roi, ref_roi in targets.items():
        ref, ref_sd, ref_values = refs[ref_roi]["value"], refs[ref_roi]["sd"], refs[ref_roi]["values"]
        for hemi in HEMIS:
            cov = coverage.get((roi, hemi), float("nan"))
            row(roi, hemi, "coverage", cov, "fraction", "template_roi_in_slab", where="template")
            if not profile.report_cr:
                continue
            values = nm[masks[(roi, hemi)]] if (roi, hemi) in masks else np.array([])
            measurable = np.isfinite(cov) and cov >= profile.min_coverage and np.isfinite(ref)
            if not measurable:
                values = np.array([])  # every measure below becomes n/a
            cr_roi = m.cr_roimean(values, ref, profile.min_voxels) if values.size else np.nan
            cr_thr = m.cr_threshold(values, ref, ref_sd, profile.threshold_k, profile.min_voxels) \
                if values.size else np.nan
            above = m.threshold_mask(values, ref, ref_sd, profile.threshold_k) if values.size else None
            vol = m.volume_mm3(above, voxel_volume) if above is not None and np.isfinite(ref_sd) else np.nan
            contrast = m.cnr(values, ref_values, profile.min_voxels) if values.size else np.nan
            method = profile.cr_method.get(roi, "threshold")
            if _score_kind(method) == "box" and not box_ok:
                # adjacent slices share their noise: the in-plane neighbours choose, as the
                # method column then says
                method = method.replace(NEIGHBOUR_BOX, NEIGHBOUR, 1)
            default = {"threshold": cr_thr, "roi_mean": cr_roi}.get(method)
            selection = method.removeprefix(SIMEX)  # the estimate SIMEX takes to no noise
            # the brightest-voxel method it refines, through the in-plane neighbour choice
            base = selection.removeprefix(NEIGHBOUR_BOX).removeprefix(NEIGHBOUR)
            chain = (method, selection, NEIGHBOUR + base if selection.startswith(NEIGHBOUR_BOX) else selection, base)
            variants = {}  # the estimates the default refines: method -> value
            if base in ("top_volume", "max_per_slice"):
                mask = masks[(roi, hemi)] if measurable and (roi, hemi) in masks else None
                noise = refs[ref_roi]["noise_sd"]
                reach = 1 if roi in NEAREST_ONLY else distance  # how far the neighbours that choose lie
                if base == "top_volume":  # a fixed volume per side: twice as much for both sides
                    volume = profile.top_volume_of(roi) * (2 if hemi == "bilateral" else 1)
                    values_of = _top_volume(nm, mask, ref, volume, voxel_volume, profile.min_voxels, slice_axis,
                                            reach)
                else:
                    values_of = _slice_max(nm, mask, masks.get((ref_roi, "bilateral")), ref_stat, profile,
                                           slice_axis, inferior_first, reach)
                estimates = {variant: values_of(variant.startswith(SIMEX), _score_kind(variant), noise)
                             for variant in dict.fromkeys(chain)}
                if base == "max_per_slice":  # the LC's thirds, from the default's slice profile
                    for name, val in zip(("rostral", "middle", "caudal"), m.split_thirds(estimates[method])):
                        row(f"{roi}_{name}", hemi, "cr", val, "ratio", method, ref_roi, ref_stat)
                    estimates = {variant: _profile_mean(p) for variant, p in estimates.items()}
                default = estimates.pop(method)
                variants = estimates
            row(roi, hemi, "cr", default, "ratio", method, ref_roi, ref_stat)
            for variant, value in variants.items():  # the estimates it refines, kept selectable
                row(roi, hemi, f"cr_{variant}", value, "ratio", variant, ref_roi, ref_stat)
            row(roi, hemi, "cr_roimean", cr_roi, "ratio", "roi_mean", ref_roi, ref_stat)
            row(roi, hemi, "cr_threshold", cr_thr, "ratio", f"threshold_k{profile.threshold_k:g}", ref_roi, ref_stat)
            row(roi, hemi, "cnr", contrast, "ratio", "roi_mean", ref_roi, "mean")
            row(roi, hemi, "volume_mm3", vol, "mm3", f"threshold_k{profile.threshold_k:g}", ref_roi, ref_stat)
    return rows, refs


def roi_crop(mask: np.ndarray, slice_axis: int, pad: int = 1, slice_pad: int = 0) -> tuple:
    """The bounding box of ``mask``, ``pad`` voxels wider in plane and ``slice_pad`` slices
    wider through them: every voxel within ``pad`` in-plane steps (``slice_pad`` slices) of its
    voxels is inside it, so a neighbour score computed on the crop equals the whole grid's
    (``pad`` 1; 2 for a score of neighbours that are chosen by their own neighbours, as the MT
    pair's tissue voxels; ``slice_pad`` 1 for ``measures.box_neighbour_mean``)."""
    box = []
    for ax, idx in enumerate(np.nonzero(mask)):
        width = slice_pad if ax == slice_axis else pad
        box.append(slice(max(0, int(idx.min()) - width), int(idx.max()) + 1 + width))
    return tuple(box)


def _score_kind(method: str) -> str | None:
    """How ``method`` chooses its voxels: "box" (``measures.box_neighbour_mean``), "inplane"
    (``measures.inplane_neighbour_mean``) or None (by their own brightness)."""
    selection = method.removeprefix(SIMEX)
    if selection.startswith(NEIGHBOUR_BOX):
        return "box"
    return "inplane" if selection.startswith(NEIGHBOUR) else None


def _estimate(estimate, crop: np.ndarray, corrected: bool, noise: float):
    """``estimate`` of the crop, taken to no noise by ``measures.simex`` when ``corrected``."""
    return m.simex(estimate, crop, noise) if corrected else estimate(crop)


def _top_volume(nm, mask, ref, volume, voxel_volume, min_voxels, axis, distance):
    """``values(corrected, by_neighbours, noise)``: the top-volume CR of the ROI ``mask``
    (None: not measurable, NaN), its voxels chosen by their neighbours (at ``distance``) or by
    brightness."""
    measurable = mask is not None and mask.any()
    box = roi_crop(mask, axis, distance) if measurable else None  # once for every variant
    inside = mask[box] if measurable else None

    def values(corrected: bool, score_kind: str | None, noise: float) -> float:
        if not measurable:
            return np.nan
        if score_kind == "box":
            raise ValueError("the box score is for the slice-wise methods")

        def estimate(img):
            scores = m.inplane_neighbour_mean(img, axis, distance)[inside] if score_kind else None
            return m.cr_top_volume(img[inside], ref, volume, voxel_volume, min_voxels, scores=scores)
        return _estimate(estimate, nm[box], corrected, noise)
    return values


def _slice_max(nm, mask, ref_mask, ref_stat, profile, axis, inferior_first, distance):
    """``values(corrected, by_neighbours, noise)``: the slice-wise max CR profile of the ROI
    ``mask`` (``measures.slice_max_cr``), ordered inferior → superior, each slice against the
    reference of its slice (kept from the image as it is when corrected: SIMEX takes the
    choice of voxels to no noise, not the reference's median or mode); neighbours at
    ``distance``."""
    measurable = mask is not None and ref_mask is not None and mask.any()
    refs = m.slice_references(nm, ref_mask, axis, ref_stat, profile.min_voxels) if measurable else None
    # once for every variant; a slice wider on each side for the box score's neighbours
    box = roi_crop(mask, axis, distance, slice_pad=1) if measurable else None
    inside = mask[box] if measurable else None

    def values(corrected: bool, score_kind: str | None, noise: float) -> np.ndarray:
        if not measurable:
            return np.full(nm.shape[axis], np.nan)

        def estimate(img):
            scores = (m.box_neighbour_mean(img) if score_kind == "box"
                      else m.inplane_neighbour_mean(img, axis, distance) if score_kind else None)
            return m.slice_top_mean(img, inside, axis, scores=scores)
        top = np.full(nm.shape[axis], np.nan)
        top[box[axis]] = _estimate(estimate, nm[box], corrected, noise)
        cr = m.slice_contrast(top, refs)
        return cr if inferior_first else cr[::-1]
    return values


def _profile_mean(profile_vals: np.ndarray) -> float:
    """The whole-ROI value of a slice profile: the mean of its finite slices (NaN below 3)."""
    finite = profile_vals[np.isfinite(profile_vals)]
    return float(np.mean(finite)) if finite.size >= 3 else np.nan


def tissue_only(image: np.ndarray, mtr_map: np.ndarray, dseg: np.ndarray, table: pd.DataFrame,
                profile: AcquisitionProfile) -> np.ndarray:
    """``image`` with the fluid voxels of an MT pair set to NaN (every measure then skips them).

    Fluid: MTR below ``profile.tissue_mtr_fraction`` times the median MTR of the profile's
    reference regions (``measures.mt_tissue_mask``). Unchanged when the profile has no
    such fraction.
    """
    if profile.tissue_mtr_fraction is None:
        return image
    ref_mtr = _reference_mtr(mtr_map, dseg, table, profile)
    return np.where(m.mt_tissue_mask(mtr_map, ref_mtr, profile.tissue_mtr_fraction), image, np.nan)


def mt_rows(mtr_map: np.ndarray, enhancement: np.ndarray, mt_on: np.ndarray, mt_off: np.ndarray,
            dseg: np.ndarray, table: pd.DataFrame, coverage: dict, profile: AcquisitionProfile, refs: dict,
            voxel_volume: float, slice_axis: int = 2) -> list[dict]:
    """MTR and MT-enhancement rows of an MT pair, all arrays on the MT-on grid as computed
    (``measures.mtr``, ``measures.mt_enhancement``, the MT-on and realigned MT-off images; fluid
    not yet removed). ``voxel_volume`` in mm³; ``refs`` is the second value of ``measure_grid``.

    ``mtr`` (method ``neighbour_residual_top_volume``) is the MTR of the nucleus, not of its
    search region: ``measures.mtr_nucleus`` over the region's tissue voxels, the profile's
    fixed volume per side (``top_volume_of``; twice that for bilateral). Fluid is left out
    there by the mean of each voxel's 8 in-plane neighbours (MTR below
    ``profile.tissue_mtr_fraction`` times the reference regions' median MTR), not by the
    voxel's own MTR: a threshold on the voxel's own noisy value would drop the nucleus voxels
    whose noise happened to be low, and a nucleus whose MTR lies near the threshold would read
    high (a development cohort with SN MTR 17-28 %: the true nucleus core read 1.11 x the truth
    at SNR 25 with fluid judged by the voxel's own value, 0.99 by its neighbours'). The
    neighbour means of MTR and MT-off (``inplane_neighbour_mean``) are taken over those tissue
    voxels.

    The rows kept from before, whose voxels are those of ``tissue_only`` (fluid by the voxel's
    own MTR): ``mtr_roimean``, the mean over the whole search region (the default ``mtr``
    until the nucleus's MTR was measured; it compresses differences between subjects, slope
    about 0.2); ``mtr_threshold``, the mean over the NM-rich voxels (I_on > ref + k·sd of the
    reference region); ``mt_enhancement``, the mean on/off over the region. The reference
    regions get their mean MTR (``mtr``, method ``roi_mean``: they are one tissue).
    """
    masks = region_masks(dseg, table)
    rows = []
    k = f"threshold_k{profile.threshold_k:g}"
    # the voxels of the region means: fluid by the voxel's own MTR (tissue_only)
    on_tissue = tissue_only(mt_on, mtr_map, dseg, table, profile)
    fluid = np.isnan(on_tissue)
    mtr_tissue = np.where(fluid, np.nan, mtr_map)
    enh_tissue = np.where(fluid, np.nan, enhancement)
    # the nucleus's MTR judges fluid by the neighbours' MTR, against the reference regions'
    # median MTR
    finite_mtr = np.where(np.isfinite(mt_off) & np.isfinite(mt_on), mtr_map, np.nan)
    ref_mtr = _reference_mtr(finite_mtr, dseg, table, profile)

    def row(roi, hemi, measure, value, unit, method, reference="n/a"):
        value = float(value) if value is not None and np.isfinite(value) else None
        rows.append(dict(roi=roi, hemi=hemi, measure=measure, value=value, unit=unit, method=method,
                         space="native", reference=reference, ref_stat="n/a"))

    def mean_of(arr, sel):
        vals = arr[sel] if sel is not None else np.array([])
        vals = vals[np.isfinite(vals)]
        return float(np.mean(vals)) if vals.size >= profile.min_voxels else None

    for roi, ref_roi in profile.references.items():
        ref = refs[ref_roi]
        # the MT-on image's distance (the pair shares its reconstruction); NEAREST_ONLY: the nearest
        distance = 1 if roi in NEAREST_ONLY else ref["neighbour_distance"]
        for hemi in HEMIS:
            cov = coverage.get((roi, hemi), np.nan)
            roi_mask = masks.get((roi, hemi))
            if not (np.isfinite(cov) and cov >= profile.min_coverage):
                roi_mask = None
            rich = nucleus = None
            if roi_mask is not None:
                rich = roi_mask.copy()
                rich[roi_mask] = m.threshold_mask(on_tissue[roi_mask], ref["value"], ref["sd"], profile.threshold_k)
                volume = profile.top_volume_of(roi) * (2 if hemi == "bilateral" else 1)
                nucleus = _nucleus_mtr(mt_on, mt_off, roi_mask, ref_mtr, profile, volume, voxel_volume,
                                       slice_axis, distance)
            row(roi, hemi, "mtr", nucleus, "percent", MTR_NUCLEUS_METHOD)
            row(roi, hemi, "mtr_roimean", mean_of(mtr_tissue, roi_mask), "percent", "roi_mean")
            row(roi, hemi, "mtr_threshold", mean_of(mtr_tissue, rich), "percent", k, ref_roi)
            row(roi, hemi, "mt_enhancement", mean_of(enh_tissue, roi_mask), "ratio", "roi_mean")
    for ref_roi in sorted(set(profile.references.values())):
        row(ref_roi, "bilateral", "mtr", mean_of(mtr_tissue, masks.get((ref_roi, "bilateral"))), "percent",
            "roi_mean")
    return rows


def _nucleus_mtr(mt_on, mt_off, mask, ref_mtr, profile, volume, voxel_volume, axis, distance) -> float:
    """The nucleus MTR (``measures.mtr_nucleus``) of the search region ``mask``, neighbours at
    ``distance``, measured on the region's crop.

    The crop is two neighbour distances wider than the region in plane: a voxel's score is
    the mean of its tissue neighbours, and whether a neighbour is tissue depends on its own
    neighbours."""
    box = roi_crop(mask, axis, pad=2 * distance)
    on, off = np.asarray(mt_on, dtype=float)[box], np.asarray(mt_off, dtype=float)[box]
    mtr_map = np.where(np.isfinite(on) & np.isfinite(off), m.mtr(on, off), np.nan)
    tissue = _tissue_by_neighbours(mtr_map, ref_mtr, profile, axis, distance)
    mtr_nb = np.where(tissue, mtr_map, np.nan)
    mtr_scores = m.inplane_neighbour_mean(mtr_nb, axis, distance)
    off_scores = m.inplane_neighbour_mean(np.where(tissue, off, np.nan), axis, distance)
    sel = mask[box] & tissue
    return m.mtr_nucleus(mtr_nb[sel], mtr_scores[sel], off_scores[sel], volume, voxel_volume, profile.min_voxels)


def _reference_mtr(mtr_map: np.ndarray, dseg: np.ndarray, table: pd.DataFrame,
                   profile: AcquisitionProfile) -> float:
    """Median MTR of the profile's reference regions (NaN when they are empty)."""
    refs = np.isin(dseg, table.loc[table["roi"].isin(set(profile.references.values())), "index"])
    return float(np.nanmedian(mtr_map[refs])) if refs.any() else float("nan")


def _tissue_by_neighbours(mtr_map: np.ndarray, ref_mtr: float, profile: AcquisitionProfile,
                          slice_axis: int, distance: int) -> np.ndarray:
    """Tissue voxels of an MT pair judged by their neighbours: the mean MTR of the in-plane
    neighbours at ``distance`` above ``profile.tissue_mtr_fraction`` times ``ref_mtr`` (the
    reference regions' median MTR), and the voxel's own MTR finite. All finite voxels when
    the profile has no such fraction."""
    finite = np.isfinite(mtr_map)
    if profile.tissue_mtr_fraction is None:
        return finite
    return finite & m.mt_tissue_mask(m.inplane_neighbour_mean(mtr_map, slice_axis, distance), ref_mtr,
                                     profile.tissue_mtr_fraction)


def qc_snr(refs: dict, map_reference: str) -> float:
    """SNR of the measured NM image: ref(R) / sigma, R the map's reference region.

    ref(R) is the reference value (the profile's statistic) and sigma the image noise sd
    estimated inside R from the differences between each voxel and its in-plane neighbours
    (``measures.noise_sd``), so that the tissue's own spread across R does not count as
    noise. It is the SNR of the image the measures see (repeats averaged), the quantity
    that sets how far a brightest-voxel estimate reads high (docs/validation.md)."""
    ref = refs.get(map_reference) or next(iter(refs.values()), None)
    if not ref or not (np.isfinite(ref["value"]) and np.isfinite(ref.get("noise_sd", np.nan))) \
            or ref["noise_sd"] <= 0:
        return float("nan")
    return float(ref["value"] / ref["noise_sd"])
