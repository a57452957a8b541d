"""Voxelwise group test of the contrast-ratio maps, by permutation.

Inputs: ``OUTPUT_DIR/sub-*/[ses-*/]anat/*_space-<space>_crmap.nii.gz`` and the
atlas ``OUTPUT_DIR/atlas/tpl-<space>_atlas-nmbids_dseg.nii.gz`` (+ ``.tsv``).

* Mask: the atlas *target* ROIs (SN, VTA, LC; ``kind == target``) dilated by one
  voxel (6-connectivity), minus reference-region voxels. Only the bounding box
  of the mask is ever read from the maps (``dataobj`` slicing), so memory is
  n_participants x box voxels, not whole images.
* One map per participant: the earliest session that has a map; several maps
  of one acquisition type in that session (runs) are averaged (NaN-aware).
  When maps of more than one acquisition type exist, each type is analysed on
  its own (absolute CR differs between protocols) and its name is prepended to
  the contrast label.
* Coverage: maps are NaN outside the NM slab. Voxels covered by at least half of
  the maps define the common region; a participant whose map covers less than
  ``MIN_COVERAGE`` of it is left out; the analysis mask is the voxels covered by
  every remaining map (no imputation).
* Test: ``nilearn.glm.second_level.non_parametric_inference`` (permuted OLS,
  the scheme nilearn documents as Freedman and Lane 1983; Anderson and
  Robinson 2001; Winkler et al. 2014), two-sided, ``n_perm`` permutations, family-wise error
  controlled by the maximum |t| statistic over the mask. Design: group dummies
  (or the predictor) + covariates (+ site dummies when harmonising by site:
  the site enters as a fixed covariate, ComBat is not applied to voxels)
  + intercept.
* Outputs per contrast: ``voxelwise_<contrast>_tstat.nii.gz``,
  ``voxelwise_<contrast>_logp_fwe.nii.gz`` (-log10 FWE-corrected p),
  ``voxelwise_<contrast>_clusters.tsv`` (clusters of voxels with FWE p < 0.05),
  ``figures/voxelwise_<contrast>.png``.
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import outputs
from .collect import NA, natural_key
from .stats import Design

MIN_PER_GROUP = 3
MIN_N_PREDICTOR = 6
MIN_COVERAGE = 0.8
ALPHA = 0.05
CLUSTER_FORMING_P = 0.001
CRMAP_RE = re.compile(r"^(?P<prefix>.+)_space-(?P<space>[a-zA-Z0-9]+)_crmap\.nii(\.gz)?$")
ATLAS_RE = re.compile(r"^tpl-(?P<space>[a-zA-Z0-9]+)_atlas-nmbids_dseg\.nii(\.gz)?$")
TARGET_ROIS = ("SN", "VTA", "LC")


@dataclass
class VoxelResult:
    skipped: str | None = None
    contrasts: list[dict] = field(default_factory=list)
    included: dict[str, bool] = field(default_factory=dict)  # participant -> in at least one test
    reasons: dict[str, str] = field(default_factory=dict)  # participant -> why left out
    space: str | None = None
    mask_voxels: int = 0


def _find_atlases(output_dir: Path) -> dict[str, Path]:
    out = {}
    for p in sorted((output_dir / "atlas").glob("tpl-*_atlas-nmbids_dseg.nii*")):
        m = ATLAS_RE.match(p.name)
        if m:
            out[m["space"]] = p
    return out


def _find_maps(output_dir: Path, sessions: dict[str, list[str]]) -> list[dict]:
    maps = []
    for pid, sess in sessions.items():
        base = output_dir / pid
        dirs = [(NA, base / "anat")] + [(s, base / s / "anat") for s in sess if s != NA]
        for ses, d in dirs:
            for p in sorted(d.glob("*_crmap.nii*")):
                m = CRMAP_RE.match(p.name)
                if m:
                    maps.append({"participant_id": pid, "session_id": ses, "prefix": m["prefix"],
                                 "space": m["space"], "path": p})
    return maps


def _acq_of_prefixes(measures: pd.DataFrame) -> dict[str, str]:
    """Map an entity prefix (source name without its suffix) to the source's acquisition type."""
    out = {}
    src = measures[["source", "acq_type"]].drop_duplicates()
    for source, acq in src.itertuples(index=False):
        if not isinstance(source, str):
            continue
        name = source.rsplit("/", 1)[-1].split(".nii")[0]
        prefix = name.rsplit("_", 1)[0]
        out[prefix] = acq
        # MT pairs: the map is named without the mt- entity
        out.setdefault(re.sub(r"_mt-(on|off)", "", prefix), acq)
    return out


def load_mask(atlas_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Return (mask, labels, affine, index->name) on the atlas grid."""
    import nibabel as nb
    from scipy import ndimage

    img = nb.load(str(atlas_path))
    labels = np.asarray(img.dataobj).astype(np.int32)
    tsv = Path(str(atlas_path).split(".nii")[0] + ".tsv")
    names: dict[int, str] = {}
    if tsv.is_file():
        t = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
        t["index"] = pd.to_numeric(t["index"], errors="coerce")
        t = t.dropna(subset=["index"])
        names = {int(i): n for i, n in zip(t["index"], t.get("name", t["index"].astype(str)))}
        if "kind" in t:
            kind = t["kind"].str.lower()
        else:  # older atlas tables: SN, VTA, LC (and LC subregions) are the targets
            roi = t.get("roi", t.get("name", pd.Series("", index=t.index))).astype(str)
            kind = np.where(roi.str.split("_").str[0].isin(TARGET_ROIS), "target", "reference")
            kind = pd.Series(kind, index=t.index)
        targets = t.loc[kind == "target", "index"].astype(int).tolist()
        refs = t.loc[kind == "reference", "index"].astype(int).tolist()
    else:
        targets, refs = [int(v) for v in np.unique(labels) if v > 0], []
    core = np.isin(labels, targets)
    mask = ndimage.binary_dilation(core) & ~np.isin(labels, refs)
    return mask, labels, img.affine, names


def _read_box(path: Path, box: tuple[slice, ...], shape, affine) -> np.ndarray | str:
    import nibabel as nb

    try:
        img = nb.load(str(path))
    except Exception as exc:
        return f"unreadable map {path.name}: {exc}"
    if tuple(img.shape[:3]) != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-3):
        return f"map {path.name} is not on the atlas grid"
    try:
        data = np.asarray(img.dataobj[box], dtype=np.float32)
    except Exception as exc:
        return f"unreadable map {path.name}: {exc}"
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    return data


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", text) or "x"


def run_voxelwise(output_dir: Path, group_dir: Path, design: Design, measures: pd.DataFrame,
                  sessions: dict[str, list[str]], n_permutations: int = 1000, seed: int = 0,
                  batch_column: str | None = None, logger: logging.Logger | None = None) -> VoxelResult:
    log = logger or logging.getLogger("nmbids")
    res = VoxelResult()
    output_dir, group_dir = Path(output_dir), Path(group_dir)
    if not design.has_test:
        res.skipped = "no group column or predictor to test"
        return res
    atlases = _find_atlases(output_dir)
    pids = set(design.frame["participant_id"])
    maps = [m for m in _find_maps(output_dir, {p: s for p, s in sessions.items() if p in pids})
            if m["space"] in atlases]
    if not atlases:
        res.skipped = "no atlas in OUTPUT_DIR/atlas"
    elif not maps:
        res.skipped = "no contrast-ratio maps (*_space-<space>_crmap.nii.gz) on an atlas grid"
    if res.skipped:
        log.warning("voxelwise analysis skipped: %s", res.skipped)
        return res
    space = pd.Series([m["space"] for m in maps]).value_counts().index[0]
    res.space = space
    maps = [m for m in maps if m["space"] == space]
    acq_of = _acq_of_prefixes(measures)
    for m in maps:
        m["acq_type"] = acq_of.get(m["prefix"], "unknown")
        m["ses_key"] = natural_key(m["session_id"])

    mask, labels, affine, names = load_mask(atlases[space])
    if not mask.any():
        res.skipped = "the atlas has no target region"
        log.warning("voxelwise analysis skipped: %s", res.skipped)
        return res
    idx = np.argwhere(mask)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
    mask_box = mask[box]

    acq_types = sorted({m["acq_type"] for m in maps})
    for acq in acq_types:
        chosen: dict[str, list[dict]] = {}
        for m in sorted((m for m in maps if m["acq_type"] == acq), key=lambda m: m["ses_key"]):
            cur = chosen.get(m["participant_id"])
            if cur is None or cur[0]["session_id"] == m["session_id"]:
                chosen.setdefault(m["participant_id"], []).append(m)
        prefix = f"{_label(acq)}_" if len(acq_types) > 1 else ""
        _run_one(res, prefix, chosen, box, mask_box, labels, affine, names, design, group_dir, n_permutations,
                 seed, batch_column, space, log)
    if not res.contrasts and not res.skipped:
        res.skipped = "no contrast had enough participants with maps"
    return res


def _run_one(res: VoxelResult, prefix: str, chosen: dict[str, list[dict]], box, mask_box, labels, affine, names,
             design: Design, group_dir: Path, n_perm: int, seed: int, batch_column, space, log) -> None:
    shape = labels.shape
    data, pids = [], []
    for pid in sorted(chosen):
        arrays = []
        for m in chosen[pid]:
            a = _read_box(m["path"], box, shape, affine)
            if isinstance(a, str):
                res.reasons[pid] = a
                continue
            arrays.append(a[mask_box])
        if not arrays:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            data.append(np.nanmean(np.stack(arrays), axis=0) if len(arrays) > 1 else arrays[0])
        pids.append(pid)
    if len(pids) < 3:
        return
    Y = np.stack(data)  # participants x mask voxels (float32)
    fin = np.isfinite(Y)
    common = fin.mean(0) >= 0.5
    if not common.any():
        return
    cover = fin[:, common].mean(1)
    keep = cover >= MIN_COVERAGE
    for pid, c in zip(pids, cover):
        if c < MIN_COVERAGE:
            res.reasons[pid] = f"map covers {100 * c:.0f}% of the common mask (< {100 * MIN_COVERAGE:.0f}%)"
    Y, fin, pids = Y[keep], fin[keep], [p for p, k in zip(pids, keep) if k]
    vox = fin.all(0)
    if not vox.any() or len(pids) < 3:
        return
    Y = Y[:, vox]

    frame = design.frame.set_index("participant_id").loc[pids]
    dm = pd.DataFrame(index=range(len(pids)))
    tested: list[tuple[str, str]] = []  # (design column, contrast label)
    if design.group_column:
        counts = frame["_group"].astype(str).value_counts()
        if counts.get(design.reference, 0) < MIN_PER_GROUP:
            msg = f"fewer than {MIN_PER_GROUP} maps in the reference group '{design.reference}'"
            res.skipped = res.skipped or msg
            log.warning("voxelwise analysis skipped: %s", msg)
            return
        small = [lev for lev in design.levels if counts.get(lev, 0) < MIN_PER_GROUP]
        if small:
            log.warning("voxelwise: group(s) %s have fewer than %d maps and are left out", ", ".join(small),
                        MIN_PER_GROUP)
            for pid in frame.index[frame["_group"].astype(str).isin(small)]:
                res.reasons[pid] = f"group has fewer than {MIN_PER_GROUP} maps"
            sel = ~frame["_group"].astype(str).isin(small).to_numpy()
            frame, Y, pids = frame[sel], Y[sel], [p for p, s in zip(pids, sel) if s]
            dm = pd.DataFrame(index=range(len(pids)))
        for t in design.terms:
            if t.kind == "group" and t.level not in small:
                dm[t.column] = frame[t.column].to_numpy(dtype=float)
                tested.append((t.column, f"{_label(t.level)}vs{_label(design.reference)}"))
        if not tested:
            msg = f"fewer than {MIN_PER_GROUP} maps in every non-reference group"
            res.skipped = res.skipped or msg
            log.warning("voxelwise analysis skipped: %s", msg)
            return
    else:
        dm["x_pred"] = frame["x_pred"].to_numpy(dtype=float)
        tested.append(("x_pred", _label(design.predictor)))
    for t in design.terms:
        if t.kind in ("continuous", "categorical"):
            dm[t.column] = frame[t.column].to_numpy(dtype=float)
    if batch_column:
        site = frame[f"_extra_{batch_column}"].astype(str)
        dummies = pd.get_dummies(site, drop_first=True, prefix="site").astype(float)
        for c in dummies.columns:
            dm[c] = dummies[c].to_numpy()
    dm = dm.loc[:, dm.nunique() > 1]
    n = len(pids)
    if n - dm.shape[1] - 1 < 3 or (design.predictor and n < MIN_N_PREDICTOR):
        msg = f"too few participants with maps (n={n}) for the model"
        res.skipped = res.skipped or msg
        log.warning("voxelwise analysis skipped: %s", msg)
        return
    if np.linalg.matrix_rank(np.column_stack([np.ones(n), dm.to_numpy()])) < dm.shape[1] + 1:
        msg = "the voxelwise design is rank deficient"
        res.skipped = res.skipped or msg
        log.warning("voxelwise analysis skipped: %s", msg)
        return

    import nibabel as nb
    from nilearn.glm.second_level import non_parametric_inference

    # images of the bounding box only, with the analysis mask
    box_shape = mask_box.shape
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box]) + affine[:3, 3]
    ana_box = np.zeros(box_shape, dtype=bool)
    ana_box[mask_box] = vox
    vol = np.zeros(box_shape + (n,), dtype=np.float32)
    vol[ana_box] = Y.T
    imgs = [nb.Nifti1Image(vol[..., i], box_affine) for i in range(n)]  # views of one array
    mask_img = nb.Nifti1Image(ana_box.astype(np.uint8), box_affine)
    from ..progress import Progress

    for pid in pids:
        res.included[pid] = True
    progress = Progress(len(tested), "contrast", logger=log)  # the permutations are the long step
    for col, label in tested:
        name = prefix + label
        progress.started(f"voxelwise {name}", f"{int(n_perm)} permutations, {n} maps, {int(vox.sum())} voxels")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = non_parametric_inference(imgs, design_matrix=dm, second_level_contrast=col, mask=mask_img,
                                           n_perm=int(n_perm), two_sided_test=True, random_state=int(seed),
                                           n_jobs=1, threshold=CLUSTER_FORMING_P)
        progress.done(f"voxelwise {name}")
        t_box = np.asarray(out["t"].get_fdata(), dtype=np.float32)
        lp_box = np.asarray(out["logp_max_t"].get_fdata(), dtype=np.float32)
        t_full = np.zeros(labels.shape, dtype=np.float32)
        lp_full = np.zeros(labels.shape, dtype=np.float32)
        t_full[box] = np.where(ana_box, t_box, 0)
        lp_full[box] = np.where(ana_box, lp_box, 0)
        sig = lp_full > -np.log10(ALPHA)
        files = _write_contrast(group_dir, name, t_full, lp_full, sig, labels, affine, names, space, n_perm,
                                design, dm, col, n, seed)
        groups = (frame["_group"].astype(str).value_counts().to_dict() if design.group_column else {})
        res.contrasts.append({"name": name, "column": col, "n": n, "n_by_group": groups,
                              "n_significant_voxels": int(sig.sum()), "mask_voxels": int(vox.sum()),
                              "min_p_fwe": float(10 ** -lp_full[box][ana_box].max()), **files})
        res.mask_voxels = max(res.mask_voxels, int(vox.sum()))
        log.info("voxelwise %s: n=%d, %d voxels tested, %d with FWE p < %.2f", name, n, int(vox.sum()),
                 int(sig.sum()), ALPHA)
    progress.close()


def _write_contrast(group_dir: Path, name: str, t_full, lp_full, sig, labels, affine, names, space, n_perm,
                    design: Design, dm: pd.DataFrame, col: str, n: int, seed: int) -> dict:
    import nibabel as nb

    t_img = nb.Nifti1Image(t_full, affine)
    lp_img = nb.Nifti1Image(lp_full, affine)
    for img in (t_img, lp_img):
        img.header.set_data_dtype(np.float32)
    common = {"Space": space, "Test": "non_parametric_inference (nilearn), two-sided, max-|t| FWE",
              "NumberOfPermutations": int(n_perm), "RandomSeed": int(seed), "N": n,
              "DesignColumns": list(dm.columns), "Tested": col,
              "Model": design.describe()}
    tpath = group_dir / f"voxelwise_{name}_tstat.nii.gz"
    lpath = group_dir / f"voxelwise_{name}_logp_fwe.nii.gz"
    outputs.save_nifti(t_img, tpath, {"Description": "t statistic of the contrast (0 outside the mask)", **common})
    outputs.save_nifti(lp_img, lpath, {"Description": "-log10 of the FWE-corrected p-value (max-|t| "
                                                      "permutation distribution; 0 outside the mask)", **common})
    table = clusters_table(t_full, sig, labels, affine, names)
    cpath = group_dir / f"voxelwise_{name}_clusters.tsv"
    outputs.write_tsv(cpath, table, outputs.CLUSTER_COLUMNS_DOC,
                      {"Description": f"Clusters of voxels with FWE-corrected p < {ALPHA}", **common})
    fig = group_dir / "figures" / f"voxelwise_{name}.png"
    try:
        plot_contrast(t_full, sig, affine, space, fig, f"{name}: t, FWE p < {ALPHA}", labels)
    except Exception as exc:  # a figure must never stop the analysis
        logging.getLogger("nmbids").warning("voxelwise figure failed: %s", exc)
        fig = None
    return {"tstat": tpath.name, "logp_fwe": lpath.name, "clusters": cpath.name,
            "figure": f"figures/{fig.name}" if fig else None, "clusters_table": table}


def clusters_table(t_full, sig, labels, affine, names) -> pd.DataFrame:
    import nibabel as nb
    from nilearn.reporting import get_clusters_table

    cols = list(outputs.CLUSTER_COLUMNS_DOC)
    if not sig.any():
        return pd.DataFrame(columns=cols)
    stat = np.where(sig, t_full, 0).astype(np.float32)
    thr = float(np.abs(stat[sig]).min()) * 0.999
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = get_clusters_table(nb.Nifti1Image(stat, affine), stat_threshold=thr, cluster_threshold=0,
                                 two_sided=True)
    tab = tab.rename(columns={"Cluster ID": "cluster_id", "X": "x", "Y": "y", "Z": "z", "Peak Stat": "peak_t",
                              "Cluster Size (mm3)": "cluster_size_mm3"})
    inv = np.linalg.inv(affine)
    regions = []
    for x, y, z in tab[["x", "y", "z"]].to_numpy(dtype=float):
        ijk = np.rint(inv @ np.array([x, y, z, 1.0]))[:3].astype(int)
        inside = all(0 <= v < s for v, s in zip(ijk, labels.shape))
        lab = int(labels[tuple(ijk)]) if inside else 0
        regions.append(names.get(lab, str(lab)) if lab else NA)
    tab["region"] = regions
    tab["cluster_size_mm3"] = tab["cluster_size_mm3"].replace("", np.nan)
    return tab.reindex(columns=cols)


def plot_contrast(t_full, sig, affine, space, path: Path, title: str, labels: np.ndarray | None = None) -> None:
    """t map (FWE-significant voxels, or all when none) over the template, atlas outlines; no pyplot."""
    import nibabel as nb
    from matplotlib.figure import Figure
    from nilearn import plotting

    try:
        from ..templates import get_template

        bg = str(get_template(space).t1w)
    except Exception:  # no template offline for this space: no background, the atlas outlines only
        bg = None
    shown = np.where(sig, t_full, 0) if sig.any() else t_full
    peak = np.unravel_index(np.argmax(np.abs(shown)), shown.shape)
    cut = (affine @ np.array([*peak, 1.0]))[:3]
    thr = float(np.abs(shown[sig]).min()) * 0.999 if sig.any() else 1e-6
    fig = Figure(figsize=(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display = plotting.plot_stat_map(
            nb.Nifti1Image(shown.astype(np.float32), affine), bg_img=bg, threshold=thr, cut_coords=tuple(cut),
            display_mode="ortho", figure=fig, colorbar=True, draw_cross=False, black_bg=False, dim=0,
            title=title if sig.any() else title + " (none; unthresholded t)")
        if labels is not None and (labels > 0).any():
            display.add_contours(nb.Nifti1Image((labels > 0).astype(np.float32), affine), levels=[0.5],
                                 colors="k", linewidths=0.6)
    outputs.save_figure(fig, path)
