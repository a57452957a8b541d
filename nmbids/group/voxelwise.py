"""Voxelwise group test of the contrast-ratio maps, by permutation.

Inputs: ``OUTPUT_DIR/sub-*/[ses-*/]anat/*_space-*_crmap.nii.gz`` with their JSON
sidecars, and the atlas ``OUTPUT_DIR/atlas/tpl-<space>_atlas-nmbids_dseg.nii.gz``
(+ ``.tsv``).

* What a map is comes from its sidecar, never from its file name (a map's name
  drops ``run-``, and an MT pair without ``acq-`` is named ``acq-MTR``):
  ``AcquisitionType``, ``Sources`` (the NM source first, ``bids:raw:<path>``) and
  ``SpatialReference``. A map without a readable sidecar or without one of these
  keys is left out with a reason; so is a map whose source has no rows in the
  measures the group level uses (e.g. left out with ``--exclude``).
* Mask: the atlas *target* ROIs (SN, VTA, LC; ``kind == target``) dilated by one
  voxel (6-connectivity), minus reference-region voxels. Only the bounding box
  of the mask is ever read from the maps (``dataobj`` slicing), so memory is
  n_participants x box voxels, not whole images.
* One map per participant: the earliest session that has a usable map; several
  maps of one acquisition type in that session are averaged (NaN-aware). When
  maps of more than one acquisition type exist, each type is analysed on its own
  (absolute CR differs between protocols) and its name is prepended to the
  contrast label.
* Coverage: maps are NaN outside the NM slab. Voxels covered by at least half of
  the maps define the common region; a participant whose map covers less than
  ``MIN_COVERAGE`` of it is left out; the analysis mask is the voxels covered by
  every remaining map (no imputation).
* Test: ``nilearn.glm.second_level.non_parametric_inference`` (permuted OLS,
  the scheme nilearn documents as Freedman and Lane 1983; Anderson and
  Robinson 2001; Winkler et al. 2014), two-sided, ``n_perm`` permutations.
  Family-wise error is controlled at two levels, both from the same permutations:
  voxel level by the maximum |t| over the mask; cluster level by the maximum
  cluster size and the maximum cluster mass, clusters being the 6-connected sets
  of voxels with two-sided p < ``cluster_forming_p`` (default
  ``CLUSTER_FORMING_P`` = 0.001; positive and negative clusters apart). Design:
  group dummies (or the predictor) + covariates (+ site dummies when harmonising
  by site: the site enters as a fixed covariate, ComBat is not applied to
  voxels) + intercept.
* Outputs per contrast: ``voxelwise_<contrast>_tstat.nii.gz``,
  ``voxelwise_<contrast>_logp_fwe.nii.gz`` (-log10 voxel-level FWE p),
  ``voxelwise_<contrast>_clusters.tsv`` (clusters of voxels with voxel-level FWE
  p < 0.05), ``voxelwise_<contrast>_logp_clustersize_fwe.nii.gz`` and
  ``voxelwise_<contrast>_logp_clustermass_fwe.nii.gz`` (-log10 cluster-level FWE
  p), ``voxelwise_<contrast>_clusterlevel.tsv`` (every cluster above the
  cluster-forming threshold), ``figures/voxelwise_<contrast>.png`` and
  ``figures/voxelwise_<contrast>_clusterlevel.png``; each with a JSON sidecar.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..contract import names as contract
from ..images import derivative_image
from . import outputs
from .collect import NA, natural_key, qc_by_source
from .stats import Design

MIN_PER_GROUP = 3
MIN_N_PREDICTOR = 6
MIN_COVERAGE = 0.8
ALPHA = 0.05
CLUSTER_FORMING_P = 0.001  # two-sided voxel p that forms the clusters of the cluster-level test
CONNECTIVITY = 6  # voxels sharing a face are neighbours (nilearn's cluster inference)
CRMAP_GLOB = contract.derivative_name("*", contract.CRMAP_SUFFIX, ".nii*", space="*")
TARGET_ROIS = ("SN", "VTA", "LC")
# what the group level reads from each map's sidecar (written by the participant level)
SIDECAR_KEYS = ("AcquisitionType", "Sources", "SpatialReference")


@dataclass
class VoxelResult:
    skipped: str | None = None
    contrasts: list[dict] = field(default_factory=list)
    included: dict[str, bool] = field(default_factory=dict)  # participant -> its maps entered a test
    reasons: dict[str, str] = field(default_factory=dict)  # participant -> why (some of) its maps were left out
    space: str | None = None
    mask_voxels: int = 0

    def leave_out(self, participant: str, why: str) -> None:
        previous = self.reasons.get(participant)
        if previous is None:
            self.reasons[participant] = why
        elif why not in previous.split("; "):
            self.reasons[participant] = f"{previous}; {why}"


def _find_atlases(output_dir: Path) -> dict[str, Path]:
    """The atlas of each template space in OUTPUT_DIR/atlas (``contract.atlas_space``)."""
    out = {}
    for p in sorted(contract.atlas_paths(output_dir, "*")[0].parent.glob(contract.atlas_paths(output_dir, "*")[0].name)):
        space = contract.atlas_space(p)
        if space:
            out[space] = p
    return out


def _source_path(uri: str) -> str:
    """``bids:raw:sub-01/anat/x.nii.gz`` (or a plain relative path) -> ``sub-01/anat/x.nii.gz``."""
    return uri.split(":", 2)[2] if uri.startswith("bids:") and uri.count(":") >= 2 else uri


def read_map_sidecar(path: Path) -> dict | str:
    """The facts the voxelwise test needs from a map's sidecar, or why they cannot be had."""
    side = contract.sidecar(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path.name}: no JSON sidecar ({side.name})"
    except (OSError, ValueError) as exc:
        return f"{path.name}: unreadable sidecar {side.name} ({exc})"
    if not isinstance(meta, dict):
        return f"{path.name}: its sidecar is not a JSON object"
    missing = [k for k in SIDECAR_KEYS if not meta.get(k)]
    if missing:
        return f"{path.name}: its sidecar has no {', '.join(missing)}"
    sources = meta["Sources"]
    sources = [sources] if isinstance(sources, str) else sources
    acq, space = meta["AcquisitionType"], meta["SpatialReference"]
    if not isinstance(acq, str) or not isinstance(space, str) or not isinstance(sources, list) \
            or not sources or not isinstance(sources[0], str):
        return f"{path.name}: its sidecar's AcquisitionType, Sources or SpatialReference is malformed"
    return {"acq_type": acq, "source": _source_path(sources[0]), "space": space}


def _find_maps(output_dir: Path, sessions: dict[str, list[str]]) -> list[dict]:
    """Every contrast-ratio map of these participants' sessions, with its sidecar's facts
    (or a ``problem``)."""
    maps = []
    for pid, sess in sessions.items():
        base = output_dir / pid
        dirs = [(NA, base / "anat")] + [(s, base / s / "anat") for s in sess if s != NA]
        for ses, d in dirs:
            for p in sorted(d.glob(CRMAP_GLOB)):
                facts = read_map_sidecar(p)
                m = {"participant_id": pid, "session_id": ses, "path": p,
                     "rel": p.relative_to(output_dir).as_posix()}
                if isinstance(facts, str):
                    m["problem"] = facts
                else:
                    m.update(facts)
                maps.append(m)
    return maps


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
                  batch_column: str | None = None, logger: logging.Logger | None = None,
                  cluster_forming_p: float = CLUSTER_FORMING_P, qc: pd.DataFrame | None = None) -> VoxelResult:
    """The voxelwise test of the maps of ``design``'s participants.

    ``measures``: the measures rows the group level uses (after ``--exclude``); a map
    enters only if its source (from its sidecar) has rows there for its participant and
    session. ``cluster_forming_p``: two-sided voxel p that forms the clusters of the
    cluster-level test. ``qc``: the QC rows (one per source), for image covariates
    (``design.image``): a participant's value is the mean over the sources of its maps.
    """
    log = logger or logging.getLogger("nmbids")
    res = VoxelResult()
    output_dir, group_dir = Path(output_dir), Path(group_dir)
    if not 0 < float(cluster_forming_p) < 1:
        raise ValueError(f"cluster_forming_p must be in (0, 1), not {cluster_forming_p}")
    if not design.has_test:
        res.skipped = "no group column or predictor to test"
        return res
    atlases = _find_atlases(output_dir)
    pids = set(design.frame["participant_id"])
    found = _find_maps(output_dir, {p: s for p, s in sessions.items() if p in pids})
    if not atlases:
        res.skipped = "no atlas in OUTPUT_DIR/atlas"
    elif not found:
        res.skipped = f"no contrast-ratio maps ({CRMAP_GLOB})"
    if res.skipped:
        log.warning("voxelwise analysis skipped: %s", res.skipped)
        return res

    rows = measures[["participant_id", "session_id", "source"]].drop_duplicates()
    measured = set(zip(rows["participant_id"].astype(str), rows["session_id"].astype(str),
                       rows["source"].astype(str)))
    maps = []
    for m in found:
        pid = m["participant_id"]
        if "problem" in m:
            why = m["problem"]
        elif (pid, m["session_id"], m["source"]) not in measured:
            why = (f"{m['path'].name}: its source {m['source']} has no measures (left out with --exclude, or "
                   "its measures table lacks it)")
        elif m["space"] not in atlases:
            why = f"{m['path'].name}: no atlas for its space {m['space']} in OUTPUT_DIR/atlas"
        else:
            maps.append(m)
            continue
        res.leave_out(pid, why)
        log.warning("voxelwise: %s: %s", pid, why)
    if not maps:
        res.skipped = "no contrast-ratio map with a usable sidecar on an atlas grid"
        log.warning("voxelwise analysis skipped: %s", res.skipped)
        return res
    space = pd.Series([m["space"] for m in maps]).value_counts().index[0]
    res.space = space
    for m in maps:
        if m["space"] != space:
            res.leave_out(m["participant_id"], f"{m['path'].name}: in space {m['space']}, the test is in {space}")
    maps = [m for m in maps if m["space"] == space]
    for m in maps:
        m["ses_key"] = natural_key(m["session_id"])
    for pid in sorted(pids - {m["participant_id"] for m in maps} - set(res.reasons)):
        res.leave_out(pid, "no contrast-ratio map")

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
        _run_one(res, acq if len(acq_types) > 1 else None, prefix, chosen, box, mask_box, labels, affine, names,
                 design, group_dir, n_permutations, seed, batch_column, space, float(cluster_forming_p), log,
                 _image_values(chosen, design, qc))
    if not res.contrasts and not res.skipped:
        res.skipped = "no contrast had enough participants with maps"
    return res


def _image_values(chosen: dict[str, list[dict]], design: Design, qc: pd.DataFrame | None) -> dict[str, dict]:
    """Image covariate -> participant -> mean QC value over the sources of its chosen maps."""
    if not design.image:
        return {}
    per_source = qc_by_source(qc, design.image)
    out: dict[str, dict] = {}
    for name in design.image:
        out[name] = {}
        for pid, maps in chosen.items():
            vals = per_source[name].reindex([(pid, m["session_id"], m["source"]) for m in maps]).to_numpy(float)
            out[name][pid] = float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan
    return out


def _run_one(res: VoxelResult, acq: str | None, prefix: str, chosen: dict[str, list[dict]], box, mask_box, labels,
             affine, names, design: Design, group_dir: Path, n_perm: int, seed: int, batch_column, space,
             cluster_p: float, log, image_values: dict[str, dict]) -> None:
    what = f"{acq} maps: " if acq else ""

    def skip(msg: str, who) -> None:
        """The test of these maps cannot run: say so, and why, for each participant."""
        res.skipped = res.skipped or what + msg
        log.warning("voxelwise analysis skipped: %s%s", what, msg)
        for p in who:
            res.leave_out(p, what + msg)

    shape = labels.shape
    data, pids = [], []
    for pid in sorted(chosen):
        lacking = [name for name, v in image_values.items() if not np.isfinite(v[pid])]
        if lacking:
            res.leave_out(pid, f"{what}no QC value of {', '.join(lacking)} for its maps' images")
            continue
        arrays = []
        for m in chosen[pid]:
            a = _read_box(m["path"], box, shape, affine)
            if isinstance(a, str):
                res.leave_out(pid, a)
                continue
            arrays.append(a[mask_box])
        if not arrays:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            data.append(np.nanmean(np.stack(arrays), axis=0) if len(arrays) > 1 else arrays[0])
        pids.append(pid)
    if len(pids) < 3:
        return skip("fewer than 3 readable maps", pids)
    Y = np.stack(data)  # participants x mask voxels (float32)
    fin = np.isfinite(Y)
    common = fin.mean(0) >= 0.5
    if not common.any():
        return skip("no mask voxel is covered by half of the maps", pids)
    cover = fin[:, common].mean(1)
    keep = cover >= MIN_COVERAGE
    for pid, c in zip(pids, cover):
        if c < MIN_COVERAGE:
            res.leave_out(pid, f"map covers {100 * c:.0f}% of the common mask (< {100 * MIN_COVERAGE:.0f}%)")
    Y, fin, pids = Y[keep], fin[keep], [p for p, k in zip(pids, keep) if k]
    vox = fin.all(0)
    if not vox.any() or len(pids) < 3:
        return skip("fewer than 3 maps cover the common mask" if len(pids) < 3
                    else "no mask voxel is covered by every map", pids)
    Y = Y[:, vox]

    frame = design.frame.set_index("participant_id").loc[pids]
    dm = pd.DataFrame(index=range(len(pids)))
    tested: list[tuple[str, str]] = []  # (design column, contrast label)
    if design.group_column:
        counts = frame["_group"].astype(str).value_counts()
        if counts.get(design.reference, 0) < MIN_PER_GROUP:
            return skip(f"fewer than {MIN_PER_GROUP} maps in the reference group '{design.reference}'", pids)
        small = [lev for lev in design.levels if counts.get(lev, 0) < MIN_PER_GROUP]
        if small:
            log.warning("voxelwise: %sgroup(s) %s have fewer than %d maps and are left out", what, ", ".join(small),
                        MIN_PER_GROUP)
            for pid in frame.index[frame["_group"].astype(str).isin(small)]:
                res.leave_out(pid, f"{what}group has fewer than {MIN_PER_GROUP} maps")
            sel = ~frame["_group"].astype(str).isin(small).to_numpy()
            frame, Y, pids = frame[sel], Y[sel], [p for p, s in zip(pids, sel) if s]
            dm = pd.DataFrame(index=range(len(pids)))
        for t in design.terms:
            if t.kind == "group" and t.level not in small:
                dm[t.column] = frame[t.column].to_numpy(dtype=float)
                tested.append((t.column, f"{_label(t.level)}vs{_label(design.reference)}"))
        if not tested:
            return skip(f"fewer than {MIN_PER_GROUP} maps in every non-reference group", pids)
    else:
        dm["x_pred"] = frame["x_pred"].to_numpy(dtype=float)
        tested.append(("x_pred", _label(design.predictor)))
    for t in design.terms:
        if t.kind in ("continuous", "categorical"):
            dm[t.column] = frame[t.column].to_numpy(dtype=float)
        elif t.kind == "image":
            dm[t.column] = np.array([image_values[t.label][p] for p in pids], dtype=float)
    if batch_column:
        site = frame[f"_extra_{batch_column}"].astype(str)
        dummies = pd.get_dummies(site, drop_first=True, prefix="site").astype(float)
        for c in dummies.columns:
            dm[c] = dummies[c].to_numpy()
    dm = dm.loc[:, dm.nunique() > 1]
    n = len(pids)
    if n - dm.shape[1] - 1 < 3 or (design.predictor and n < MIN_N_PREDICTOR):
        return skip(f"too few participants with maps (n={n}) for the model", pids)
    if np.linalg.matrix_rank(np.column_stack([np.ones(n), dm.to_numpy()])) < dm.shape[1] + 1:
        return skip("the voxelwise design is rank deficient", pids)

    import nibabel as nb
    from nilearn.glm.second_level import non_parametric_inference
    from scipy import stats as sstats

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
    # the t threshold nilearn forms the clusters with (permuted_ols: two-sided, residual df of the
    # design with its intercept), recorded in the sidecars
    df = n - dm.shape[1] - 1
    cluster_t = float(sstats.t.isf(cluster_p / 2, df))
    inputs = {"Sources": [f"bids::{m['rel']}" for p in pids for m in chosen[p]],
              "Participants": list(pids)}
    cluster_def = {"p": cluster_p, "t": cluster_t, "df": int(df), "TwoSided": True,
                   "Description": f"clusters are the {CONNECTIVITY}-connected sets of voxels with two-sided p < "
                                  f"{cluster_p:g} (|t| > {cluster_t:.4g}, t distribution with {df} df); "
                                  "positive and negative clusters are formed apart"}
    from ..progress import Progress

    progress = Progress(len(tested), "contrast", logger=log)  # the permutations are the long step
    for col, label in tested:
        name = prefix + label
        progress.started(f"voxelwise {name}", f"{int(n_perm)} permutations, {n} maps, {int(vox.sum())} voxels")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = non_parametric_inference(imgs, design_matrix=dm, second_level_contrast=col, mask=mask_img,
                                           n_perm=int(n_perm), two_sided_test=True, random_state=int(seed),
                                           n_jobs=1, threshold=cluster_p)
        progress.done(f"voxelwise {name}")
        box_maps = {k: np.asarray(out[k].get_fdata(), dtype=np.float64)
                    for k in ("t", "logp_max_t", "size", "logp_max_size", "logp_max_mass") if k in out}
        t_box = box_maps["t"]
        if "size" in box_maps:  # voxels in a cluster: nilearn's own clusters
            supra = ana_box & (box_maps["size"] > 0)
        else:
            supra = ana_box & (np.abs(t_box) > cluster_t)
        full = {}
        for k, v in box_maps.items():
            f = np.zeros(labels.shape, dtype=np.float32)  # the table reads the float64 box maps
            f[box] = np.where(supra if k.startswith("logp_max_") and k != "logp_max_t" else ana_box, v, 0)
            full[k] = f
        t_full, lp_full = full["t"], full["logp_max_t"]
        sig = lp_full > -np.log10(ALPHA)
        table = clusterlevel_table(t_box, supra, box_maps, box, labels, affine, names)
        for pid in pids:
            res.included[pid] = True
        files = _write_contrast(group_dir, name, full, sig, table, labels, affine, names, space, n_perm, design,
                                dm, col, n, seed, inputs, cluster_def)
        groups = (frame["_group"].astype(str).value_counts().to_dict() if design.group_column else {})
        res.contrasts.append({"name": name, "column": col, "n": n, "n_by_group": groups,
                              "n_significant_voxels": int(sig.sum()), "mask_voxels": int(vox.sum()),
                              "min_p_fwe": float(10 ** -lp_full[box][ana_box].max()),
                              "cluster_forming_p": cluster_p, "cluster_forming_t": cluster_t,
                              "n_clusters": len(table),
                              "n_significant_clusters": int((table["p_fwe_size"] < ALPHA).sum()), **files})
        res.mask_voxels = max(res.mask_voxels, int(vox.sum()))
        log.info("voxelwise %s: n=%d, %d voxels tested, %d with FWE p < %.2f; %d cluster(s) at p < %g, %d with "
                 "cluster-size FWE p < %.2f", name, n, int(vox.sum()), int(sig.sum()), ALPHA, len(table), cluster_p,
                 res.contrasts[-1]["n_significant_clusters"], ALPHA)
    progress.close()


def clusterlevel_table(t_box, supra, box_maps: dict, box, labels, affine, names) -> pd.DataFrame:
    """One row per cluster of ``supra`` (positive and negative apart, 6-connected): its size, peak
    and cluster-level FWE p (from nilearn's ``logp_max_size``/``logp_max_mass`` maps)."""
    from scipy import ndimage

    cols = list(outputs.CLUSTERLEVEL_COLUMNS_DOC)
    structure = ndimage.generate_binary_structure(3, 1)
    offset = np.array([s.start for s in box])
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    rows = []
    for sign in (1, -1):
        lab, k = ndimage.label(supra & (sign * t_box > 0), structure)
        for c in range(1, k + 1):
            where = lab == c
            ijk = np.argwhere(where)
            peak = ijk[np.argmax(np.abs(t_box[where]))]
            full_ijk = peak + offset
            xyz = (affine @ np.array([*full_ijk, 1.0]))[:3]
            region = int(labels[tuple(full_ijk)])
            row = {"n_voxels": int(where.sum()), "size_mm3": float(where.sum()) * voxel_mm3,
                   "peak_t": float(t_box[tuple(peak)]), "x": float(xyz[0]), "y": float(xyz[1]), "z": float(xyz[2]),
                   "region": names.get(region, str(region)) if region else NA,
                   "peak_p_fwe": float(10 ** -box_maps["logp_max_t"][tuple(peak)])}
            for key, column in (("logp_max_size", "p_fwe_size"), ("logp_max_mass", "p_fwe_mass")):
                row[column] = float(10 ** -box_maps[key][where].max()) if key in box_maps else np.nan
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=cols)
    tab = pd.DataFrame(rows)
    tab["_abs"] = -tab["peak_t"].abs()
    tab = tab.sort_values(["p_fwe_size", "n_voxels", "_abs"], ascending=[True, False, True], kind="stable")
    tab["cluster_id"] = np.arange(1, len(tab) + 1)
    return tab.reset_index(drop=True).reindex(columns=cols)


def _write_contrast(group_dir: Path, name: str, full: dict, sig, table: pd.DataFrame, labels, affine, names, space,
                    n_perm, design: Design, dm: pd.DataFrame, col: str, n: int, seed: int, inputs: dict,
                    cluster_def: dict) -> dict:
    import nibabel as nb

    common = {"Space": space, "Test": "non_parametric_inference (nilearn), two-sided, max-|t| FWE",
              "TwoSided": True, "NumberOfPermutations": int(n_perm), "RandomSeed": int(seed), "N": n,
              "DesignColumns": list(dm.columns), "Tested": col, "Model": design.describe(), **inputs}
    cluster_common = {**common, "Test": "non_parametric_inference (nilearn), two-sided, cluster-level FWE",
                      "ClusterFormingThreshold": cluster_def, "Connectivity": CONNECTIVITY}

    def save(key: str, suffix: str, meta: dict) -> str:
        img = nb.Nifti1Image(full[key], affine)
        img.header.set_data_dtype(np.float32)
        img = derivative_image(img, space=space)  # template codes, no time unit
        path = contract.GroupFiles(group_dir).voxelwise(name, suffix, ".nii.gz")
        outputs.save_nifti(img, path, meta)
        return path.name

    files = {
        "tstat": save("t", "tstat", {"Description": "t statistic of the contrast (0 outside the mask)", **common}),
        "logp_fwe": save("logp_max_t", "logp_fwe", {
            "Description": "-log10 of the voxel-level FWE-corrected p-value (max-|t| permutation distribution; "
                           "0 outside the mask)", **common}),
    }
    kinds = {"logp_max_size": ("clustersize", "cluster size: number of voxels of the cluster"),
             "logp_max_mass": ("clustermass", "cluster mass: sum over the cluster's voxels of |t| minus the "
                                              "cluster-forming t")}
    for key, (kind, statistic) in kinds.items():
        if key in full:
            files[f"logp_{kind}_fwe"] = save(key, f"logp_{kind}_fwe", {
                "Description": f"-log10 of the cluster-level FWE-corrected p-value of the cluster each voxel belongs "
                               f"to (permutation distribution of the maximum {kind[len('cluster'):]} of the "
                               "clusters; 0 outside the clusters)", "Statistic": statistic, **cluster_common})
    voxel_table = clusters_table(full["t"], sig, labels, affine, names)
    cpath = contract.GroupFiles(group_dir).voxelwise(name, "clusters", ".tsv")
    outputs.write_tsv(cpath, voxel_table, outputs.CLUSTER_COLUMNS_DOC,
                      {"Description": f"Clusters of voxels with voxel-level FWE-corrected p < {ALPHA}", **common})
    lpath = contract.GroupFiles(group_dir).voxelwise(name, "clusterlevel", ".tsv")
    outputs.write_tsv(lpath, table, outputs.CLUSTERLEVEL_COLUMNS_DOC, {
        "Description": "Every cluster of voxels above the cluster-forming threshold, with its cluster-level "
                       "FWE-corrected p (sorted by p_fwe_size)", **cluster_common})
    files.update({"clusters": cpath.name, "clusters_table": voxel_table, "clusterlevel": lpath.name,
                  "clusterlevel_table": table})
    files["figure"] = _figure(contract.GroupFiles(group_dir).voxelwise_figure(name), full["t"], sig, affine, space,
                              f"{name}: t, FWE p < {ALPHA}", labels)
    if "logp_max_size" in full:
        csig = full["logp_max_size"] > -np.log10(ALPHA)
        files["cluster_figure"] = _figure(
            contract.GroupFiles(group_dir).voxelwise_figure(name, "clusterlevel"), full["t"], csig, affine, space,
            f"{name}: t, cluster-size FWE p < {ALPHA} (clusters at p < {cluster_def['p']:g})", labels)
    return files


def _figure(path: Path, t_full, sig, affine, space, title, labels) -> str | None:
    try:
        plot_contrast(t_full, sig, affine, space, path, title, labels)
    except Exception as exc:  # a figure must never stop the analysis
        logging.getLogger("nmbids").warning("voxelwise figure failed: %s", exc)
        return None
    return f"figures/{path.name}"


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
