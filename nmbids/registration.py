"""Registration and resampling with ANTsPy (the ANTs engine, in-process).

Conventions (measured, see docs/architecture.md):

* ANTs transform lists are applied last-first, like ``antsApplyTransforms``.
* T1w → template is brainstem-focused: an affine of the whole head at 2 mm, then SyN only
  inside a brainstem box of the template at full resolution. The nuclei all live in that
  box; a whole-head SyN costs about five times more for no gain there.
* NM → T1w is rigid with the NM slab as the *fixed* image, so that the similarity metric is
  computed only where the slab has data, started from the scanner headers (same session),
  with dense sampling and a fixed seed: ANTs' default random sampling of a thin slab
  against a whole head is unstable.
"""
from __future__ import annotations


import ants
import numpy as np

from .builtin_atlas import BRAINSTEM_BOX_MM

SEED = 20261122  # the default of --random-seed for the registrations
_seed_in_use = SEED


def set_seed(seed: int | None) -> None:
    """The sampling seed of the registrations that follow in this process (None: ``SEED``).
    Each nipype node sets it before registering (nodes may run in other processes)."""
    global _seed_in_use
    _seed_in_use = SEED if seed is None else int(seed)


def _seed():
    # Fixed sampling seed: same inputs give the same transforms (within ITK threading noise).
    ants.config._random_seed = _seed_in_use


def n4_field(image: ants.ANTsImage, mask: ants.ANTsImage | None = None, shrink: int = 4,
             iterations=(50,), block: int = 1, spline_mm: float | None = None) -> ants.ANTsImage:
    """Multiplicative bias field of a positive image by N4 (Tustison et al. 2010).

    A smooth field and a single fitting level are all a slab or a head needs here; each
    extra level refines the mesh and, measured on a 225×250×20 slab, costs about five times
    more (2.5 s for one level at shrink 4, 68 s for two at shrink 2). ``spline_mm`` is the
    B-spline control-point spacing in mm; None keeps ANTsPy's one mesh element over the
    image (the T1w, which serves only the registrations). The field is defined everywhere,
    not only inside the fitting mask.

    ``block`` > 1 (no ``mask``): the field is fitted on every ``block``-th voxel and
    interpolated back linearly. N4 otherwise spends about half of its time on a large image
    evaluating the B-spline field at every voxel: for a 1 mm head, block 2 and shrink 4 gave
    the field of shrink 8 within 0.01 % (1st-99th percentile in the head) in 4.0 s instead
    of 7.4 s (both measured on a loaded machine).
    """
    if block > 1:
        if mask is not None:
            raise ValueError("n4_field: block subsampling does not take a mask")
        coarse = n4_field(_subsample(image, block), shrink=shrink, iterations=iterations, spline_mm=spline_mm)
        return image.new_image_like(_upsample_linear(coarse.numpy(), image.shape, block))
    img = ants.image_clone(image, pixeltype="float")
    arr = img.numpy()
    floor = np.percentile(arr[arr > 0], 1) if np.any(arr > 0) else 0.0
    img = ants.from_numpy(np.clip(arr, floor, None), origin=img.origin, spacing=img.spacing,
                          direction=img.direction)
    if mask is None:
        mask = ants.get_mask(img, low_thresh=float(np.percentile(arr, 40)), cleanup=0)
    return ants.n4_bias_field_correction(img, mask=mask, shrink_factor=shrink, return_bias_field=True,
                                         spline_param=spline_mm,
                                         convergence={"iters": list(iterations), "tol": 1e-6})


def _subsample(image: ants.ANTsImage, step: int) -> ants.ANTsImage:
    """Every ``step``-th voxel of ``image`` along each axis, starting mid-block (what N4's own
    shrinking does: no averaging, which would blur the tissue classes whose histogram N4
    sharpens)."""
    first = (step - 1) // 2
    arr = image.numpy().astype(np.float32)[first::step, first::step, first::step]
    spacing = np.asarray(image.spacing, float)
    origin = np.asarray(image.origin) + np.asarray(image.direction) @ (spacing * first)
    return ants.from_numpy(np.ascontiguousarray(arr), origin=tuple(origin), spacing=tuple(spacing * step),
                           direction=image.direction)


def _upsample_linear(coarse: np.ndarray, shape: tuple, step: int) -> np.ndarray:
    """Back from the grid of ``_subsample`` to ``shape``: linear interpolation, axis by axis,
    constant beyond the outermost coarse voxels."""
    first = (step - 1) // 2
    out = coarse.astype(np.float32)
    for axis, n in enumerate(shape):
        x = np.clip((np.arange(n) - first) / step, 0, coarse.shape[axis] - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, coarse.shape[axis] - 1)
        w = (x - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out


def shrink_for(image: ants.ANTsImage, grid_mm: float) -> int:
    """The N4 shrink factor that puts the fitting grid at about ``grid_mm`` (at least 1)."""
    return max(1, int(round(grid_mm / min(image.spacing))))


def n4(image: ants.ANTsImage, mask: ants.ANTsImage | None = None, **kwargs) -> ants.ANTsImage:
    """``image / n4_field(image)`` over the whole image.

    Why not ANTsPy's corrected output: it divides only the voxels inside the fitting mask
    and leaves the others as they were (measured: a factor 1.78 inside, 1.00 outside), which
    puts a step into the image at the mask edge. Dividing by the field keeps it smooth.
    """
    field = n4_field(image, mask, **kwargs)
    out = ants.image_clone(image, pixeltype="float")
    return out.new_image_like((out.numpy() / np.maximum(field.numpy(), 1e-6)).astype(np.float32))


def _crop_box_mm(image: ants.ANTsImage, box_ras: tuple) -> ants.ANTsImage:
    """Crop ``image`` to a world box given in RAS mm (ANTs speaks LPS: negate x and y)."""
    corners = np.array(np.meshgrid(*box_ras, indexing="ij")).reshape(3, -1).T
    lps = corners * np.array([-1.0, -1.0, 1.0])
    idx = np.array([ants.transform_physical_point_to_index(image, tuple(p)) for p in lps])
    lo = np.clip(np.floor(idx.min(0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, image.shape)
    return ants.crop_indices(image, tuple(int(v) for v in lo), tuple(int(v) for v in hi))


# T1w -> template settings per --registration-quality: voxel size (mm) of the whole-head
# affine stage, voxel size of the brainstem box for SyN (None: the template's own), and SyN
# iterations per level (shrink factors 4, 2, 1; 0 skips a level).
REGISTRATION_SETTINGS = {
    "default": {"affine_mm": 3.0, "box_mm": 2.0, "syn_iterations": (60, 40, 20)},
    "fast": {"affine_mm": 4.0, "box_mm": 2.0, "syn_iterations": (40, 20, 0)},
}


def t1w_to_template(t1w: ants.ANTsImage, template: ants.ANTsImage, template_mask: ants.ANTsImage,
                    outprefix: str, quality: str = "default") -> dict:
    """Register the T1w (moving) to the template (fixed).

    Returns ``{"affine": path, "warp": path, "invwarp": path, "similarity": float}``; the
    similarity is measured in the brainstem box (the whole warped T1w is made apart, by
    ``warp_to_template``, so that the measures need not wait for it). Forward list (template grid ← T1w): ``[warp, affine]``;
    inverse list (T1w grid ← template): ``[affine, invwarp]`` with ``[True, False]``.
    """
    _seed()
    cfg = REGISTRATION_SETTINGS[quality]
    low = cfg["affine_mm"]
    tpl_low = ants.resample_image(template * template_mask, (low, low, low), use_voxels=False, interp_type=0)
    t1_low = ants.resample_image(t1w, (low, low, low), use_voxels=False, interp_type=0)
    # 25 % of the voxels sampled (ANTsPy's default is 20 %; was 50 %): on three phantom heads
    # the brainstem moved by 0.05-0.10 mm on average (max 0.23 mm) against 50 %, for about a
    # third of the time; the SyN stage refines the brainstem anyway.
    aff = ants.registration(fixed=tpl_low, moving=t1_low, type_of_transform="Affine",
                            aff_iterations=(200, 100, 50), aff_shrink_factors=(4, 2, 1),
                            aff_smoothing_sigmas=(2, 1, 0), aff_random_sampling_rate=0.25,
                            outprefix=outprefix + "aff_")
    affine_path = aff["fwdtransforms"][0]
    box = _crop_box_mm(template, BRAINSTEM_BOX_MM)
    if cfg["box_mm"]:
        box = ants.resample_image(box, (cfg["box_mm"],) * 3, use_voxels=False, interp_type=0)
    syn = ants.registration(fixed=box, moving=t1w, type_of_transform="SyNOnly",
                            initial_transform=[affine_path], reg_iterations=cfg["syn_iterations"],
                            outprefix=outprefix + "syn_")
    warp = [p for p in syn["fwdtransforms"] if p.endswith(".nii.gz")][0]
    invwarp = [p for p in syn["invtransforms"] if p.endswith(".nii.gz")][0]
    in_box = warp_to_template(t1w, box, {"affine": affine_path, "warp": warp})
    return {"affine": affine_path, "warp": warp, "invwarp": invwarp, "similarity": similarity(in_box, box)}


def warp_to_template(t1w: ants.ANTsImage, template: ants.ANTsImage, t1_to_tpl: dict) -> ants.ANTsImage:
    """The T1w resampled (linear) onto ``template``'s grid through ``[warp, affine]``."""
    return ants.apply_transforms(fixed=template, moving=t1w, transformlist=[t1_to_tpl["warp"], t1_to_tpl["affine"]],
                                 interpolator="linear")


def rigid(fixed: ants.ANTsImage, moving: ants.ANTsImage, outprefix: str,
          mask: ants.ANTsImage | None = None) -> dict:
    """Rigid registration from the identity (images of one session share scanner space).

    Mattes mutual information, two levels (shrink 4 and 2), 10 % of the voxels sampled with
    the fixed seed. Measured on a 0.8 × 0.8 × 2 mm slab: sampling 10 % instead of 30 % and
    60/30 instead of 100/50 iterations halved the cost and moved the result by 0.04 mm
    (NM → T1w); the motion between repeats changed by under 0.01 mm.
    Returns ANTsPy's result (``fwdtransforms``, ``warpedmovout``, ...).
    """
    _seed()
    return ants.registration(fixed=fixed, moving=moving, type_of_transform="Rigid", initial_transform="Identity",
                             mask=mask, aff_metric="mattes", aff_random_sampling_rate=0.1,
                             aff_iterations=(60, 30), aff_shrink_factors=(4, 2), aff_smoothing_sigmas=(2, 1),
                             outprefix=outprefix)


def nm_to_t1w(nm: ants.ANTsImage, t1w: ants.ANTsImage, outprefix: str) -> dict:
    """Rigid NM ↔ T1w with the NM slab as the fixed image.

    The returned transform maps NM points to T1w points, so it pulls the T1w onto the NM grid
    as is and pushes NM onto the T1w grid when inverted.
    Returns ``{"rigid": path, "similarity": float}``.
    """
    nm_mask = ants.threshold_image(nm, float(np.percentile(nm.numpy(), 20)), float(nm.max()) + 1)
    reg = rigid(nm, t1w, outprefix, mask=nm_mask)
    # warpedmovout is the T1w pulled onto the NM grid: the similarity after registration
    return {"rigid": reg["fwdtransforms"][0],
            "similarity": similarity(nm, reg["warpedmovout"], mask=nm_mask)}


def similarity(a: ants.ANTsImage, b: ants.ANTsImage, mask: ants.ANTsImage | None = None) -> float:
    """Absolute Pearson correlation of two images on the same grid (inside ``mask``).

    Used as a QC number: NM and T1w contrasts differ, but edges and tissue classes still
    correlate; a misregistered slab drops it sharply.
    """
    x, y = a.numpy().ravel(), b.numpy().ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    if mask is not None:
        keep &= mask.numpy().ravel() > 0
    if keep.sum() < 10:
        return float("nan")
    return float(abs(np.corrcoef(x[keep], y[keep])[0, 1]))


def resample_repeat(fixed: ants.ANTsImage, moving: ants.ANTsImage, transforms: list[str]) -> ants.ANTsImage:
    """``moving`` pulled onto ``fixed``'s grid by cubic B-spline interpolation, clipped at 0.

    Why not linear: a linear resampling of a 2 mm slab shifted by a fraction of a slice
    blurs a thin nucleus by an amount that depends on the motion, so the CR of the average
    changes from session to session. On the test-retest phantom (12 subjects, 2 sessions,
    true nucleus, true reference) the ICC of SN CR of the averaged repeats was 0.81 with
    linear and 0.87 with B-spline resampling; a windowed sinc (0.83) rang at the edge of
    thin FSE slabs (true-nucleus CR of a resampled FSE repeat 0.20 for a truth of 0.13),
    B-spline did not. Magnitude images are non-negative: the spline's undershoot at edges
    is clipped.
    """
    out = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=transforms, interpolator="bSpline")
    return out.new_image_like(np.clip(out.numpy(), 0.0, None).astype(np.float32))


def align_repeats(repeats: list[ants.ANTsImage], outprefix: str) -> tuple[list[np.ndarray], list[float]]:
    """Rigidly realign repeats to the first (B-spline resampling).

    Returns the arrays of the repeats on the first one's grid and, per repeat, the motion
    relative to the first as the mean displacement (mm) of the slab's voxel grid under the
    rigid transform.
    """
    ref = repeats[0]
    aligned, motion = [ref.numpy()], [0.0]
    pts = _grid_points(ref)
    for k, mov in enumerate(repeats[1:], start=1):
        reg = rigid(ref, mov, f"{outprefix}rep{k}_")
        motion.append(mean_displacement(reg["fwdtransforms"][0], pts))
        aligned.append(resample_repeat(ref, mov, reg["fwdtransforms"]).numpy())
    return aligned, motion


def realign_repeats(repeats: list[ants.ANTsImage], outprefix: str) -> tuple[ants.ANTsImage, list[float]]:
    """Rigidly realign repeats to the first (``align_repeats``) and average them: the mean
    image and the motion of each repeat (mm)."""
    aligned, motion = align_repeats(repeats, outprefix)
    ref = repeats[0]
    mean = ants.from_numpy(np.mean(aligned, axis=0), origin=ref.origin, spacing=ref.spacing,
                           direction=ref.direction)
    return mean, motion


def _grid_points(img: ants.ANTsImage, n: int = 6) -> np.ndarray:
    """Physical (LPS) points on a coarse grid spanning the image."""
    axes = [np.linspace(0, s - 1, min(n, s)) for s in img.shape]
    idx = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    direction, spacing = np.asarray(img.direction), np.asarray(img.spacing)
    return (direction @ (idx * spacing[:, None]) + np.asarray(img.origin)[:, None]).T


def mean_displacement(transform_file: str, points: np.ndarray) -> float:
    """Mean distance (mm) that a rigid/affine ANTs transform moves ``points``."""
    tx = ants.read_transform(transform_file)
    params = np.asarray(tx.parameters, float)
    matrix, offset = params[:9].reshape(3, 3), params[9:12]
    centre = np.asarray(tx.fixed_parameters, float)[:3]
    moved = (points - centre) @ matrix.T + centre + offset
    return float(np.mean(np.linalg.norm(moved - points, axis=1)))


def pull_atlas_to_nm(atlas: ants.ANTsImage, nm: ants.ANTsImage, t1_to_tpl: dict, rigid: str) -> ants.ANTsImage:
    """Template labels → NM grid (nearest label). NM point → T1w (rigid) → template."""
    return ants.apply_transforms(fixed=nm, moving=atlas,
                                 transformlist=[t1_to_tpl["affine"], t1_to_tpl["invwarp"], rigid],
                                 whichtoinvert=[True, False, False], interpolator="genericLabel")


def push_nm_to_template(img: ants.ANTsImage, template: ants.ANTsImage, t1_to_tpl: dict, rigid: str,
                        interpolator: str = "linear") -> ants.ANTsImage:
    """NM-grid image → template grid. Template point → T1w (warp, affine) → NM (rigid⁻¹)."""
    return ants.apply_transforms(fixed=template, moving=img,
                                 transformlist=[rigid, t1_to_tpl["warp"], t1_to_tpl["affine"]],
                                 whichtoinvert=[True, False, False], interpolator=interpolator)


# An NM slab's slices are at least this much thicker than its pixels for nmbids to tell them
# from the pixels by size alone (2D multi-slice slabs: 2-6 times in practice).
SLICE_ANISOTROPY = 1.1


def slice_axis(image: ants.ANTsImage) -> int:
    """The voxel axis along which an NM slab's slices are stacked.

    The axis of the largest voxel size when it is at least ``SLICE_ANISOTROPY`` times every
    other's (a 2D multi-slice slab); otherwise, among the axes within that factor of the
    largest, the one whose direction is closest to the head's superior-inferior axis (an axial
    slab of near-isotropic voxels: the LC is taken per axial slice).

    Why: the slice-wise LC and the in-plane neighbour scores are computed along the third
    voxel axis, and NIfTI files do not always store the slices there (a slab converted or
    reoriented by another tool: the same slab with its slices along the first axis read LC n/a
    and VTA CR up to 0.08 lower before ``slices_last``).
    """
    spacing = np.asarray(image.spacing, dtype=float)
    thick = np.flatnonzero(spacing * SLICE_ANISOTROPY >= spacing.max())
    if thick.size == 1:
        return int(thick[0])
    superior = np.abs(np.asarray(image.direction, dtype=float)[2, thick])  # LPS: row 2 is S
    return int(thick[np.argmax(superior)])


def slices_last(image: ants.ANTsImage) -> ants.ANTsImage:
    """``image`` with its voxel axes reordered so that its slices (``slice_axis``) are the
    third, the other two in their order; ``image`` itself when they already are. A relabelling
    of the voxels, not a resampling: every voxel keeps its value and its place in the head
    (the direction's columns and the spacing follow their axes; the origin is voxel 0's)."""
    axis = slice_axis(image)
    if axis == 2:
        return image
    order = [a for a in range(3) if a != axis] + [axis]
    return ants.from_numpy(np.ascontiguousarray(image.numpy().transpose(order)), origin=tuple(image.origin),
                           spacing=tuple(float(image.spacing[a]) for a in order),
                           direction=np.asarray(image.direction, dtype=float)[:, order])


def slice_tilt_deg(image: ants.ANTsImage) -> float:
    """Angle, in degrees (0-90), between the third voxel axis of ``image`` (its slices' normal,
    after ``slices_last``) and the head's superior-inferior axis: about 0-30 for an oblique
    axial slab, about 90 for a sagittal or coronal one.

        tilt = arccos(|D[2, 2]|)   (D the direction matrix, LPS: row 2 is S; its columns are
                                     unit vectors, orthogonal on an unsheared grid)
    """
    return float(np.degrees(np.arccos(min(1.0, abs(float(np.asarray(image.direction, dtype=float)[2, 2]))))))


def inferior_first(image: ants.ANTsImage) -> bool:
    """Whether the third voxel axis of an axial image runs inferior → superior (LPS and RAS
    agree on z): the order of an axial slab's slices."""
    return float(np.asarray(image.direction)[2, 2]) >= 0


def push_nm_to_t1w(img: ants.ANTsImage, t1w: ants.ANTsImage, rigid: str) -> ants.ANTsImage:
    """NM-grid image → T1w grid (rigid inverted)."""
    return ants.apply_transforms(fixed=t1w, moving=img, transformlist=[rigid], whichtoinvert=[True],
                                 interpolator="linear")
