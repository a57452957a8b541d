"""Outcome measures for neuromelanin-sensitive MRI, as pure numpy functions.

No I/O here: callers pass arrays of intensities (or masks) and get numbers back,
so every formula can be unit-tested by hand.

Conventions shared by all functions:

* Non-finite inputs (NaN, and +/-inf) are voxels we cannot trust, typically
  voxels outside the NM slab after resampling. They are ignored.
* When too few valid values remain (``min_voxels``) the result is
  ``float('nan')``: a missing value is honest, a number made from two voxels
  is not.
* Intensities are in the arbitrary units (a.u.) of the image; contrast ratios
  and CNR are unitless ratios.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import gaussian_kde

from .acquisitions import DEFAULT_REF_STAT, REF_STATS

MIN_VOXELS = 5
# Points of the grid on which the kernel density is evaluated to find the mode.
KDE_GRID_POINTS = 512
NAN = float("nan")


def _finite(values: ArrayLike) -> np.ndarray:
    """Return the finite values of ``values`` as a flat float array."""
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def _sd(values: np.ndarray) -> float:
    """Sample standard deviation (ddof=1) of already-finite values."""
    return float(np.std(values, ddof=1))


def reference_value(values: ArrayLike, stat: str = DEFAULT_REF_STAT,
                    min_voxels: int = MIN_VOXELS) -> float:
    """Summary intensity ref(R) of the reference region R.

    ``stat`` is one of:

    * ``"mode"``: argmax over x of the Gaussian kernel density estimate
      f(x) = 1/(n h) * sum_i phi((x - R_i) / h), with Scott's bandwidth
      (scipy.stats.gaussian_kde, h = sd(R) * n**(-1/5)), evaluated on
      512 equally spaced points from min(R) to max(R). The mode resists the
      tail of bright or dark partial-volume voxels that pulls the mean.
    * ``"median"``: median(R).
    * ``"mean"``: mean(R).

    Units: those of the image (a.u.). Non-finite values are ignored. Returns
    NaN when fewer than ``min_voxels`` finite values remain; constant input
    returns that constant (the density has no width to estimate).

    Raises ValueError for an unknown ``stat``.
    """
    if stat not in REF_STATS:
        raise ValueError(f"unknown reference statistic {stat!r}; use one of {REF_STATS}")
    r = _finite(values)
    if r.size < min_voxels:
        return NAN
    if stat == "median":
        return float(np.median(r))
    if stat == "mean":
        return float(np.mean(r))
    lo, hi = float(r.min()), float(r.max())
    if lo == hi:
        # gaussian_kde fails on zero variance; the mode of a constant is itself.
        return lo
    grid = np.linspace(lo, hi, KDE_GRID_POINTS)
    density = gaussian_kde(r, bw_method="scott")(grid)
    return float(grid[np.argmax(density)])


def contrast_ratio(values: ArrayLike, ref: float) -> np.ndarray:
    """Voxelwise contrast ratio CR = (I - ref) / ref (unitless).

    Returns a float array with the shape of ``values``; non-finite voxels stay
    NaN. When ``ref`` is NaN or <= 0 the ratio has no meaning and the whole
    map is NaN.
    """
    arr = np.asarray(values, dtype=float)
    if not np.isfinite(ref) or ref <= 0:
        return np.full(arr.shape, NAN)
    return (arr - ref) / ref


def cr_roimean(values: ArrayLike, ref: float, min_voxels: int = MIN_VOXELS) -> float:
    """ROI-mean contrast ratio: mean over ROI voxels i of (I_i - ref) / ref.

    Unitless. Non-finite voxels are ignored; NaN when fewer than
    ``min_voxels`` finite voxels remain or when ref is NaN or <= 0.
    """
    cr = _finite(contrast_ratio(values, ref))
    if cr.size < min_voxels:
        return NAN
    return float(np.mean(cr))


def threshold_mask(values: ArrayLike, ref: float, ref_sd: float, k: float = 3.0) -> np.ndarray:
    """Voxels brighter than the reference: I > ref + k * sd (strict inequality).

    ``ref_sd`` is the standard deviation of the reference region, in the same
    units as I. Returns a bool array with the shape of ``values``. Non-finite
    voxels are False; when ref or ref_sd is not finite no voxel can pass and
    the mask is all False (check the reference before reading a volume of 0).
    """
    arr = np.asarray(values, dtype=float)
    if not (np.isfinite(ref) and np.isfinite(ref_sd)):
        return np.zeros(arr.shape, dtype=bool)
    # NaN > x is False, so voxels outside the slab never pass.
    return arr > ref + k * ref_sd


def cr_threshold(values: ArrayLike, ref: float, ref_sd: float, k: float = 3.0,
                 min_voxels: int = MIN_VOXELS) -> float:
    """Mean contrast ratio of supra-threshold voxels.

    mean over {i : I_i > ref + k * sd} of (I_i - ref) / ref, unitless.
    NaN when fewer than ``min_voxels`` voxels pass the threshold, or when ref
    is NaN or <= 0.
    """
    arr = np.asarray(values, dtype=float)
    above = arr[threshold_mask(arr, ref, ref_sd, k)]
    if above.size < min_voxels:
        return NAN
    cr = contrast_ratio(above, ref)
    return float(np.mean(cr)) if np.all(np.isfinite(cr)) else NAN


def n_top_voxels(volume_mm3: float, voxel_volume_mm3: float, min_voxels: int = MIN_VOXELS) -> int:
    """Number of voxels that make up ``volume_mm3``: max(min_voxels, round(V / v_voxel))."""
    if not (volume_mm3 > 0 and voxel_volume_mm3 > 0):
        raise ValueError("volume_mm3 and voxel_volume_mm3 must be > 0")
    return max(int(min_voxels), int(round(volume_mm3 / voxel_volume_mm3)))


def cr_top_volume(values: ArrayLike, ref: float, volume_mm3: float, voxel_volume_mm3: float,
                  min_voxels: int = MIN_VOXELS, scores: ArrayLike | None = None) -> float:
    """Mean contrast ratio of the top voxels that together make up ``volume_mm3``.

    With n = n_top_voxels(V, v_voxel) and the ROI voxels ranked by their score from the
    highest: CR = mean over the n first of (I_j - ref) / ref, unitless. The score is the
    voxel's own intensity when ``scores`` is None (the brightest voxels, method
    ``top_volume``), else ``scores`` (one per value; method ``neighbour_top_volume`` passes
    ``inplane_neighbour_mean``). Voxels whose value or score is not finite are left out.

    Why a score other than the value: the brightest n of noisy voxels are the ones whose
    noise was positive, so the brightest-voxel mean reads high by about sigma * E[max-type
    order statistics] / ref, an offset that grows as SNR falls (independent phantoms at
    SNR 8, 14 and 28 per repeat: SN measured/true 1.71, 1.45 and 1.28). A score that does
    not contain the voxel's own noise (its neighbours' mean) selects the same nucleus core
    without that bias: the values averaged are then an unbiased sample of the voxels chosen.

    Why a fixed volume rather than a threshold: every voxel over ref + k·sd counts in
    ``cr_threshold``, so a brighter nucleus lifts more of its partial-volume rim over the
    threshold and its mean is pulled down; differences between subjects are compressed
    (slope 0.33 against the truth on the phantom). The same number of brightest voxels in
    every subject does not depend on the contrast it measures. Choose V below the volume of
    the nucleus, so that the voxels are inside it. Non-finite voxels are ignored; NaN when
    fewer than n finite voxels remain or when ref is NaN or <= 0.
    """
    vals = np.asarray(values, dtype=float).ravel()
    score = vals if scores is None else np.asarray(scores, dtype=float).ravel()
    if score.shape != vals.shape:
        raise ValueError("scores must have one value per voxel")
    ok = np.isfinite(vals) & np.isfinite(score)
    vals, score = vals[ok], score[ok]
    n = n_top_voxels(volume_mm3, voxel_volume_mm3, min_voxels)
    if vals.size < n or not np.isfinite(ref) or ref <= 0:
        return NAN
    top = vals[np.argpartition(score, score.size - n)[score.size - n:]]
    return float(np.mean(contrast_ratio(top, ref)))


def _kernel_mean(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """sum_j k_j I_j / sum_j k_j over the finite voxels j under the 0/1 ``kernel`` centred on
    each voxel (its centre 0: the voxel itself left out); voxels beyond the edge are not under
    it. NaN where no finite voxel is."""
    from scipy import ndimage

    finite = np.isfinite(arr)
    total = ndimage.correlate(np.where(finite, arr, 0.0), kernel, mode="constant", cval=0.0)
    count = ndimage.correlate(finite.astype(float), kernel, mode="constant", cval=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), NAN)


def _mad_sd(d: np.ndarray) -> float:
    """1.4826 * median(|d - median(d)|): the sd of a normal sample, from its median absolute
    deviation, which ignores the few values an edge or a lesion puts in the tails."""
    return 1.4826 * float(np.median(np.abs(d - np.median(d))))


def _ring(distance: int) -> np.ndarray:
    """In-plane kernel of the voxels at Chebyshev distance ``distance`` (8 at 1, 16 at 2)."""
    k = int(distance)
    if k < 1:
        raise ValueError("distance must be 1 or more")
    kernel = np.ones((2 * k + 1, 2 * k + 1, 1))
    kernel[1:-1, 1:-1, 0] = 0.0  # the voxels nearer than k, the voxel itself among them
    return kernel


def inplane_neighbour_mean(image: ArrayLike, slice_axis: int = 2, distance: int = 1) -> np.ndarray:
    """Mean of each voxel's in-plane neighbours at ``distance``, the voxel itself left out.

        s_i = (1 / |N_i|) * sum over j in N_i of I_j,

    N_i = the finite voxels of voxel i's slice (along ``slice_axis``) at Chebyshev distance
    ``distance`` from it: the 8 that touch it by a face or an edge at distance 1, the ring of
    16 around those at distance 2. NaN where N_i is empty. Voxels beyond the image edge are
    not neighbours.

    Why: this is the selection score of the noise-independent CR estimators
    (``cr_top_volume`` and ``slice_max_cr`` with ``scores``). When the image noise is
    independent between voxels, s_i does not contain the noise of I_i, so choosing voxels
    by s_i and averaging their own values is unbiased: E[I_i | i chosen] = the voxel's
    signal. Choosing by I_i itself (the brightest voxels) keeps the voxels whose noise
    happened to be positive and reads high by an offset that grows as SNR falls (the
    maximum of n noisy values). In-plane only: NM slabs have slices 2-6 times thicker than
    their pixels, and a neighbour across a slice is another tissue more often than not.
    Averaging 8 neighbours also lowers the noise of the score by sqrt(8), so the voxels
    chosen are those of the nucleus even at low SNR. Distance 2 is for images whose noise
    adjacent voxels share (``neighbour_distance``): there the 8 nearest carry part of the
    voxel's own noise, and the choice would read high again.
    """
    arr = np.moveaxis(np.asarray(image, dtype=float), slice_axis, 2)
    return np.moveaxis(_kernel_mean(arr, _ring(distance)), 2, slice_axis)


def box_neighbour_mean(image: ArrayLike) -> np.ndarray:
    """Mean of each voxel's 26 neighbours in its 3 x 3 x 3 box, the voxel itself left out.

        s_i = (1 / |B_i|) * sum over j in B_i of I_j,

    B_i = the finite voxels at Chebyshev distance 1 from voxel i in 3D: its 8 in-plane
    neighbours and the 9 voxels at the same in-plane positions in each adjacent slice. NaN
    where B_i is empty. Voxels beyond the image edge are not neighbours.

    Why: the selection score of the GRE-MT LC (method ``box_neighbour_max_per_slice``). The
    LC is a column about 15 mm long along the brainstem that the slices of an NM slab cut
    across (the reason its CR is taken per slice), so the voxels across the adjacent slices
    are the LC again, while the in-plane reach stays that of ``inplane_neighbour_mean`` (a
    wider in-plane score leaves a nucleus 2-4 voxels across). The score then averages 26
    values instead of 8, its noise sd is sqrt(26 / 8) = 1.8 times lower, and it still holds
    none of the voxel's own noise, so that the 3 voxels per slice are found in the nucleus
    at lower SNR. Measured (benchmarks/score_study.py, two cohorts of AAL3-nucleus
    phantoms at 0.5 x 0.5 x 1.5 mm, SNR 8-40 per repeat, 1-3 repeats): GRE-MT LC read
    0.78-0.89 and 0.65-0.91 of the truth against 0.38-0.88 and 0.54-0.88 with the 8
    in-plane neighbours, smallest test-retest ICC 0.72 and 0.54 against 0.59 and 0.32. Not
    the FSE LC: in its thicker slices (2.5 mm) the ICC and r fell. Valid only where
    adjacent slices do not share their noise (``slices_share_noise``).
    """
    arr = np.asarray(image, dtype=float)
    kernel = np.ones((3,) * arr.ndim)
    kernel[(1,) * arr.ndim] = 0.0
    return _kernel_mean(arr, kernel)


def noise_sd(image: ArrayLike, mask: ArrayLike, slice_axis: int = 2,
             min_voxels: int = MIN_VOXELS, distance: int = 1) -> float:
    """Standard deviation of the image noise, estimated inside ``mask`` from one image.

        d_i = I_i - s_i,   s_i = inplane_neighbour_mean(I, distance)_i (R = 8 * distance
        neighbours), sigma = 1.4826 * median(|d_i - median(d)|) / sqrt(1 + 1/R)

    over the mask's voxels whose R neighbours are all finite. For noise independent between
    voxels with sd sigma, var(d_i) = sigma^2 (1 + 1/R), and the signal of a smooth tissue
    (a reference region) cancels in d_i; 1.4826 * MAD is the sd of a normal distribution
    and ignores the few voxels where d_i holds an edge. Units of the image. One image is
    enough (no repeats, no background). Noise made correlated between neighbours by
    interpolation (zero-filling, realigned repeats, an image resampled to another grid) is
    underestimated at distance 1 (``neighbour_distance``). NaN when fewer than ``min_voxels``
    voxels qualify.
    """
    arr = np.asarray(image, dtype=float)
    sel = np.asarray(mask, dtype=bool) & np.isfinite(arr)
    full = np.moveaxis(np.isfinite(arr), slice_axis, 2)
    kernel = _ring(distance)
    from scipy import ndimage

    whole = np.moveaxis(ndimage.correlate(full.astype(float), kernel, mode="constant", cval=0.0) == kernel.sum(),
                        2, slice_axis)
    sel &= whole
    if sel.sum() < min_voxels:
        return NAN
    d = (arr - inplane_neighbour_mean(arr, slice_axis, distance))[sel]
    return _mad_sd(d) / float(np.sqrt(1.0 + 1.0 / kernel.sum()))


# ``neighbour_distance``: below this ratio of the noise sd estimated from the nearest
# neighbours to the one from the ring beyond them, adjacent voxels share their noise.
SHARED_NOISE_RATIO = 0.7


def neighbour_distance(image: ArrayLike, mask: ArrayLike, slice_axis: int = 2,
                       min_voxels: int = MIN_VOXELS) -> int:
    """The in-plane distance of the neighbours whose mean scores a voxel: 1 (the 8 nearest)
    or 2 (the ring of 16 beyond them), from the noise inside ``mask`` (a reference region).

        q = noise_sd(I, mask, distance=1) / noise_sd(I, mask, distance=2)
        distance = 2 if q < SHARED_NOISE_RATIO else 1       (1 when q is not finite)

    Why. The neighbour choice is unbiased only when a voxel's neighbours do not share its
    noise. Scanners often reconstruct NM images on a finer grid than they acquire (zero-
    filling, "interpolation" on Siemens, 0.4 mm pixels from 0.8 mm data): the noise of
    adjacent voxels is then correlated (a sinc's 0.64 at half an acquired pixel), the 8
    nearest hold part of the voxel's own noise, and choosing by them reads high again (toy
    band nucleus with 2 x zero-filled noise, tests: the 8 nearest read 1.17 and 1.49 of the
    truth at SNR 12 and 6, nearly the brightest voxels' 1.21 and 1.62; the ring of 16 read 0.97
    and 0.91). The same correlation makes the distance-1 noise estimate low, so q measures it:
    with independent noise both estimate sigma and q is about 1; with 2 x zero-filling q is
    about 0.5 (benchmarks/zero_fill_study.py: the reference regions of 12 GRE-MT and 12 FSE
    phantom images each way, 0.4 mm pixels, 2 repeats realigned, SNR 14 and 28: 0.92-1.04 with
    independent noise, 0.47-0.54 zero-filled; the toy 0.46-0.52). The threshold lies halfway
    between, on a log scale (sqrt(0.5) = 0.71). Further than 2 is not offered: the ring would
    reach outside a nucleus 2-4 voxels wide.
    """
    near = noise_sd(image, mask, slice_axis, min_voxels, distance=1)
    far = noise_sd(image, mask, slice_axis, min_voxels, distance=2)
    if not (np.isfinite(near) and np.isfinite(far) and far > 0):
        return 1
    return 2 if near / far < SHARED_NOISE_RATIO else 1


def through_slice_noise_sd(image: ArrayLike, mask: ArrayLike, slice_axis: int = 2,
                           min_voxels: int = MIN_VOXELS) -> float:
    """Standard deviation of the image noise inside ``mask``, from the slices on either side.

        d_i = I_i - (I_i-1 + I_i+1) / 2   (i -+ 1: the voxels straight across the adjacent
        slices), sigma = 1.4826 * median(|d_i - median(d)|) / sqrt(1.5)

    over the mask's voxels whose two across-slice neighbours are finite. For noise independent
    between slices var(d_i) = 1.5 sigma^2; noise shared by adjacent slices (a 3D slab
    interpolated through its slices) cancels in d_i and makes sigma low. Anatomy that changes
    between slices makes it high. Units of the image; NaN when fewer than ``min_voxels``
    voxels qualify.
    """
    arr = np.moveaxis(np.asarray(image, dtype=float), slice_axis, 2)
    sel = np.moveaxis(np.asarray(mask, dtype=bool), slice_axis, 2)
    if arr.shape[2] < 3:
        return NAN
    d = np.full(arr.shape, NAN)
    d[:, :, 1:-1] = arr[:, :, 1:-1] - 0.5 * (arr[:, :, :-2] + arr[:, :, 2:])
    d = d[sel & np.isfinite(d)]
    if d.size < min_voxels:
        return NAN
    return _mad_sd(d) / float(np.sqrt(1.5))


def slices_share_noise(image: ArrayLike, mask: ArrayLike, slice_axis: int = 2,
                       min_voxels: int = MIN_VOXELS, distance: int = 1) -> bool:
    """Whether adjacent slices share their noise, from the noise inside ``mask`` (a reference
    region):

        q = through_slice_noise_sd(I, mask) / noise_sd(I, mask, distance)
        shared = q < SHARED_NOISE_RATIO, or q not finite

    Why: ``box_neighbour_mean`` scores a voxel with the voxels across the adjacent slices;
    that is unbiased only when they do not hold part of its noise. 2D slices are excited
    one by one and their noise is independent (q about 1, more where the anatomy changes
    between thick slices); a 3D slab reconstructed on slices thinner than it acquires
    (zero-filling through the slab) shares it, and q falls towards sqrt(0.22 / 1.5) = 0.38
    at a sinc's 0.64 correlation between adjacent slices. The threshold is
    ``neighbour_distance``'s, which makes the same call in plane. ``distance``: the image's
    in-plane neighbour distance (the in-plane estimate that is not itself lowered by
    shared noise). Unknown (too few slices or voxels) counts as shared: the caller then
    keeps to in-plane neighbours. Measured on phantom GRE-MT slabs (benchmarks/
    zero_fill_study.py --axis slices: AAL3 nuclei, 0.5 mm pixels, 1 mm slices zero-filled
    from 2 mm, 60 images, SNR 8-28 per repeat): q 0.38-0.47 zero-filled, 0.90-1.07 not; on
    the zero-filled ones the box kept read the LC at r 0.44-0.55 with one repeat, the in-plane
    choice at 0.69-0.76.
    """
    across = through_slice_noise_sd(image, mask, slice_axis, min_voxels)
    inplane = noise_sd(image, mask, slice_axis, min_voxels, distance)
    if not (np.isfinite(across) and np.isfinite(inplane) and inplane > 0):
        return True
    return bool(across / inplane < SHARED_NOISE_RATIO)


def cnr(values: ArrayLike, ref_values: ArrayLike, min_voxels: int = MIN_VOXELS) -> float:
    """Contrast-to-noise ratio CNR = (mean(I) - mean(R)) / sd(R), unitless.

    sd is the sample standard deviation (ddof=1) of the reference voxels R.
    Non-finite voxels are ignored; NaN when either region has fewer than
    ``min_voxels`` finite voxels or when sd(R) is 0.
    """
    i, r = _finite(values), _finite(ref_values)
    if i.size < min_voxels or r.size < max(min_voxels, 2):
        return NAN
    sd = _sd(r)
    if sd == 0:
        return NAN
    return float((np.mean(i) - np.mean(r)) / sd)


def volume_mm3(mask: ArrayLike, voxel_volume_mm3: float) -> float:
    """Volume of a mask: V = (number of voxels in mask) * voxel volume, in mm3.

    ``mask`` may be bool or numeric; a voxel counts when its value is > 0
    (NaN does not count). An empty mask gives 0.0, not NaN: the caller decides
    whether 0 is honest (e.g. the threshold was undefined).
    """
    count = np.count_nonzero(np.asarray(mask, dtype=float) > 0)
    return float(count * voxel_volume_mm3)


def coverage(roi_weights: ArrayLike, inside_slab: ArrayLike) -> float:
    """Fraction of the ROI inside the slab: sum(w * inside) / sum(w), in [0, 1].

    ``roi_weights`` w are binary (a mask) or fractional (a probabilistic ROI);
    non-finite weights count as 0. ``inside_slab`` is a bool (or 0/1) array of
    the same shape. NaN for an empty ROI (sum(w) == 0).
    """
    w = np.nan_to_num(np.asarray(roi_weights, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    inside = np.asarray(inside_slab, dtype=bool)
    total = w.sum()
    if total <= 0:
        return NAN
    return float((w * inside).sum() / total)


def slice_top_mean(image: ArrayLike, roi_mask: ArrayLike, axis: int = 2, n_max: int = 3,
                   min_area_fraction: float = 0.5, scores: ArrayLike | None = None) -> np.ndarray:
    """Per slice s along ``axis``: the mean intensity of the ``n_max`` top-scoring ROI voxels of s.

    The score is the voxel's intensity when ``scores`` is None, else ``scores`` (an array
    like ``image``). A slice is NaN when it has fewer than ``n_max`` ROI voxels whose value
    and score are finite, or when the ROI's cross-section in it is smaller than
    ``min_area_fraction`` times its largest cross-section. Units of the image; a float array
    of length ``image.shape[axis]`` in slice index order. The numerator of ``slice_max_cr``.
    """
    img = np.moveaxis(np.asarray(image, dtype=float), axis, 0)
    score = img if scores is None else np.moveaxis(np.asarray(scores, dtype=float), axis, 0)
    roi = np.moveaxis(np.asarray(roi_mask, dtype=bool), axis, 0)
    out = np.full(img.shape[0], NAN)
    area = roi.reshape(roi.shape[0], -1).sum(axis=1)
    for s in range(img.shape[0]):
        vals, sc = img[s][roi[s]], score[s][roi[s]]
        ok = np.isfinite(vals) & np.isfinite(sc)
        vals, sc = vals[ok], sc[ok]
        if vals.size < n_max or area[s] < min_area_fraction * area.max():
            continue
        out[s] = vals[np.argsort(sc, kind="stable")[-n_max:]].mean()
    return out


def slice_references(image: ArrayLike, ref_mask: ArrayLike, axis: int = 2, stat: str = "median",
                     min_voxels: int = MIN_VOXELS) -> np.ndarray:
    """Per slice s along ``axis``: ref_s = reference_value(reference voxels in s, stat).

    NaN for a slice with fewer than ``min_voxels`` finite reference voxels. Units of the
    image; a float array of length ``image.shape[axis]``. The denominator of ``slice_max_cr``.
    """
    img = np.moveaxis(np.asarray(image, dtype=float), axis, 0)
    ref = np.moveaxis(np.asarray(ref_mask, dtype=bool), axis, 0)
    return np.array([reference_value(img[s][ref[s]], stat=stat, min_voxels=min_voxels)
                     for s in range(img.shape[0])], dtype=float)


def slice_max_cr(image: ArrayLike, roi_mask: ArrayLike, ref_mask: ArrayLike, axis: int = 2,
                 n_max: int = 3, stat: str = "median",
                 min_voxels: int = MIN_VOXELS, min_area_fraction: float = 0.5,
                 scores: ArrayLike | None = None) -> np.ndarray:
    """Slice-wise maximum-intensity contrast ratio (LC method, USC/Tona style).

    For each slice s along ``axis``:

        CR_s = (mean of the n_max top-scoring ROI voxels in s - ref_s) / ref_s,
        ref_s = reference_value(reference voxels in s, stat),

    that is (``slice_top_mean`` - ``slice_references``) / ``slice_references``.
    The score is the voxel's intensity when ``scores`` is None (the brightest voxels,
    method ``max_per_slice``), else ``scores`` (an array like ``image``; method
    ``neighbour_max_per_slice`` passes ``inplane_neighbour_mean``, so that the voxels are
    chosen without their own noise: see ``cr_top_volume``, the same bias is larger here,
    3 voxels per slice).

    Taking the brightest voxels rather than the ROI mean limits the partial
    volume of a thin nucleus (the LC) in thick slices; taking the reference in
    the same slice removes slice-to-slice intensity drift.

    A slice is NaN when it has fewer than ``n_max`` finite ROI voxels or fewer
    than ``min_voxels`` finite reference voxels (or ref_s <= 0), and when the
    ROI's cross-section in it is smaller than ``min_area_fraction`` times its
    largest cross-section: the tapering ends of a search region reach past the
    nucleus, and there the brightest voxels are noise (measured on the phantom:
    the caudal third of an FSE LC then read 0.05 against a truth of 0.16).
    Non-finite image voxels are ignored. Returns a float array of length
    ``image.shape[axis]``, unitless, in slice index order.
    """
    top = slice_top_mean(image, roi_mask, axis, n_max, min_area_fraction, scores)
    refs = slice_references(image, ref_mask, axis, stat, min_voxels)
    return slice_contrast(top, refs)


def slice_contrast(top: ArrayLike, refs: ArrayLike) -> np.ndarray:
    """Elementwise (top_s - ref_s) / ref_s; NaN where either is not finite or ref_s <= 0."""
    t, r = np.asarray(top, dtype=float), np.asarray(refs, dtype=float)
    ok = np.isfinite(t) & np.isfinite(r) & (r > 0)
    out = np.full(t.shape, NAN)
    out[ok] = (t[ok] - r[ok]) / r[ok]
    return out


# ``simex``: the noise added, in units of the image's noise variance, and the draws per level.
SIMEX_LEVELS = (0.5, 1.0, 1.5, 2.0)
SIMEX_DRAWS = 40


def simex(estimate, image: ArrayLike, noise_sd: float, levels=SIMEX_LEVELS, n_draws: int = SIMEX_DRAWS,
          seed: int = 0):
    """Simulation-extrapolation (SIMEX) of an estimate to an image without noise.

    With T = ``estimate`` (image -> a number or an array), sigma = ``noise_sd`` and Z_b
    (b = 1..B, B = ``n_draws``) arrays of independent standard normal deviates the shape of
    the image, drawn from ``seed`` (so that the result is reproducible):

        T(0)    = T(I)
        T(zeta) = (1 / B) * sum over b of T(I + sqrt(zeta) * sigma * Z_b),  zeta in ``levels``
        (a, c)  = least-squares line T(zeta) = a + c * zeta over zeta in {0} and ``levels``
        SIMEX   = a - c                                          (zeta = -1: no noise left)

    The same Z_b serve every level (common random numbers: the slope is then not blurred by
    the draws). NaN voxels stay NaN. Elementwise when T returns an array; a level whose T is
    not finite is left out of the line, and the result is NaN when T(0) is not finite or
    fewer than two levels remain.

    Why (Cook & Stefanski 1994, J Am Stat Assoc 89:1314; Carroll et al. 2006, Measurement
    Error in Nonlinear Models, ch. 5). An estimate that chooses voxels by a score without
    their own noise (``cr_top_volume`` with ``scores``, ``slice_top_mean``) averages values
    that are unbiased, but the voxels it chooses are the nucleus's less often as the noise
    grows, so its expectation falls with the noise variance sigma^2 (GRE-MT SN 0.85 of the
    truth at SNR 8 per repeat, 1.00 at 40: docs/validation_snr.md). Adding noise of known
    variance zeta * sigma^2 and measuring again traces that fall; extending it back to
    zeta = -1 gives the value without noise. The extrapolant is a line: when the score does
    not hold the voxel's own noise, the missed choices enter the expectation to first order
    in the variance (its Taylor expansion in sigma^2). On the phantom study
    (benchmarks/simex_study.py: AAL3 nuclei, SNR 8-40 per repeat, 1-3 repeats, two slab
    geometries) GRE-MT SN read 0.96-1.04 of the truth against 0.85-1.03 for the neighbour
    choice, the spread between SNR levels 0.04-0.05 against 0.06-0.14, ICC and r within
    0.01; a quadratic extrapolant cut the bias no further there and lost up to 0.2 of ICC.
    The cost is variance where the correction is large (FSE SN at SNR 14 x 1 repeat: ICC
    0.73 against 0.78; LC, 3 voxels per slice: ICC down 0.03-0.07), which is why only the
    GRE-MT SN takes it by default (``acquisitions.PROFILES``). It needs the image's noise to
    be independent between voxels with the sd given (``noise_sd``); noise made correlated
    between neighbours by interpolation is underestimated there, and the correction is then
    smaller than it should be. A toy band nucleus (tests) shows the limit of the line: a
    nucleus of one flat intensity with no partial-volume rim, which the neighbour choice
    reads without loss at moderate noise, reads 3-6 % high after SIMEX.
    """
    img = np.asarray(image, dtype=float)
    t0 = np.asarray(estimate(img), dtype=float)
    if not (np.isfinite(noise_sd) and noise_sd >= 0) or not np.isfinite(t0).any():
        return NAN if t0.ndim == 0 else np.full(t0.shape, NAN)
    rng = np.random.default_rng(seed)
    draws = [rng.standard_normal(img.shape) for _ in range(int(n_draws))]
    zetas = np.asarray(levels, dtype=float)
    means = np.stack([np.mean([np.asarray(estimate(img + np.sqrt(z) * noise_sd * d), dtype=float)
                               for d in draws], axis=0) for z in zetas])
    z = np.concatenate([[0.0], zetas])
    y = np.concatenate([t0[None], means], axis=0).reshape(z.size, -1)
    out = np.full(y.shape[1], NAN)
    for j in range(y.shape[1]):
        ok = np.isfinite(y[:, j])
        if not ok[0] or ok.sum() < 3:  # T(0) and at least two levels
            continue
        slope, intercept = np.polyfit(z[ok], y[ok, j], 1)
        out[j] = intercept - slope
    return float(out[0]) if t0.ndim == 0 else out.reshape(t0.shape)


def split_thirds(profile: ArrayLike) -> tuple[float, float, float]:
    """Rostral, middle and caudal means of a per-slice profile.

    ``profile`` is ordered inferior -> superior (index 0 most inferior), so the
    caller must make sure the slice axis runs upward (e.g. RAS orientation).
    The finite entries are kept in order and cut into three contiguous groups
    as equal as possible; the split is kept symmetric so that rostral and
    caudal always get the same number of slices (n = 7 -> 2/3/2,
    n = 8 -> 3/2/3). Returns (mean of superior third, mean of middle third,
    mean of inferior third) = (rostral, middle, caudal). All NaN when fewer
    than 3 finite entries.
    """
    p = _finite(profile)
    n = p.size
    if n < 3:
        return (NAN, NAN, NAN)
    base, rem = divmod(n, 3)
    # rem == 1: the extra slice goes to the middle; rem == 2: one to each end.
    outer = base + (1 if rem == 2 else 0)
    caudal, middle, rostral = p[:outer], p[outer:n - outer], p[n - outer:]
    return (float(rostral.mean()), float(middle.mean()), float(caudal.mean()))


def _safe_divide_by_off(numerator: np.ndarray, off: np.ndarray, eps: float) -> np.ndarray:
    """numerator / off where off > eps and both are finite, NaN elsewhere."""
    num, den = np.broadcast_arrays(np.asarray(numerator, dtype=float), np.asarray(off, dtype=float))
    out = np.full(num.shape, NAN)
    ok = np.isfinite(num) & np.isfinite(den) & (den > eps)
    out[ok] = num[ok] / den[ok]
    return out


def mtr(mt_on: ArrayLike, mt_off: ArrayLike, eps: float = 1e-6) -> np.ndarray:
    """Magnetization-transfer ratio MTR = 100 * (M_off - M_on) / M_off, in percent.

    Elementwise on co-registered MT-on and MT-off images. NaN where M_off <= eps
    (background, where the ratio is noise divided by noise) or where either
    input is not finite.
    """
    on = np.asarray(mt_on, dtype=float)
    off = np.asarray(mt_off, dtype=float)
    return 100.0 * _safe_divide_by_off(off - on, off, eps)


def mt_enhancement(mt_on: ArrayLike, mt_off: ArrayLike, eps: float = 1e-6) -> np.ndarray:
    """MT enhancement ("signal integrity") map M_on / M_off, unitless.

    Elementwise; NaN where M_off <= eps or either input is not finite.
    """
    return _safe_divide_by_off(mt_on, mt_off, eps)


def mt_tissue_mask(mtr_map: ArrayLike, ref_mtr: float, fraction: float = 0.5) -> np.ndarray:
    """Voxels of an MT pair that hold tissue rather than fluid: MTR > fraction * ref_mtr.

    Free water has almost no MT effect (CSF MTR about 0-5 %, tissue 30-50 %), so in an
    MT-on image CSF is as bright as NM-rich tissue, and near the SN, VTA and LC (cisterns,
    aqueduct, fourth ventricle) a brightness threshold alone would count it as NM.
    ``ref_mtr`` is the MTR of a reference region (percent). Returns a bool array; NaN
    voxels and a non-finite ``ref_mtr`` give False.
    """
    arr = np.asarray(mtr_map, dtype=float)
    if not np.isfinite(ref_mtr):
        return np.zeros(arr.shape, dtype=bool)
    return arr > fraction * ref_mtr


# ``mtr_nucleus``: the search region must hold at least this many times the voxels selected, so
# that the tissue line fitted over it is the surrounding tissue's and not the nucleus's.
MTR_NUCLEUS_MIN_REGION = 4


def mtr_nucleus(values: ArrayLike, mtr_scores: ArrayLike, off_scores: ArrayLike, volume_mm3: float,
                voxel_volume_mm3: float, min_voxels: int = MIN_VOXELS) -> float:
    """MTR of the nucleus in a search region, not of the whole region (method
    ``neighbour_residual_top_volume``), in percent.

    Per voxel i of the region: m_i its MTR (``values``); s_i and t_i the means of its 8
    in-plane neighbours' MTR and MT-off signal (``mtr_scores``, ``off_scores``: the
    ``inplane_neighbour_mean`` maps; the voxel itself left out). With n =
    n_top_voxels(V, v_voxel):

        (a, b) = least-squares fit of s_i = a + b * t_i over the region   (the tissue line)
        d_i    = (s_i - a - b * t_i) - median_j (s_j - a - b * t_j)
        H, L   = the n voxels with the largest d_i, the n voxels with the smallest d_i
        MTR    = mean over H of m_i  if  mean_H(d) > -mean_L(d),  else  mean over L of m_i

    Voxels with a non-finite value or score are left out. NaN when fewer than
    max(min_voxels, MTR_NUCLEUS_MIN_REGION * n) voxels remain (the fit would be the nucleus's).

    Why. The mean over a search region mixes the nucleus with the tissue around it: a nucleus
    fills about a sixth of its region, and on the MT-pair validation (docs/validation_mtr.md,
    AAL3 nuclei, nucleus MTR 20-46 %) the SN region mean read at slope 0.12-0.17 against the
    truth, 1.37-1.40 x the truth where the nucleus's MTR is low and 0.92 x where it is high.
    The nucleus has to be found in the data, as for CR, but its MT contrast has no fixed sign:
    its MTR can lie below or above that of grey matter, even of white matter, and the
    surrounding tissue's own MTR spans white to grey matter's. Choosing the voxels of lowest
    MTR (or brightest MT-on) assumes the sign: it picks grey matter or CSF partial volume when
    the nucleus is not the lowest (same validation: SN slope 0.62-0.68, and 0.18-0.35 at
    measured/true 0.88-0.92 where the nucleus's MTR is above grey matter's; VTA 0.03-0.17). What
    tells the nucleus from its surroundings whatever the sign is that the surroundings are
    mixtures of white matter, grey matter and CSF, whose MTR falls as their free water (the
    proton-density MT-off signal) rises: in the plane (MT-off, MTR) they lie along one line,
    and a nucleus, whose MTR is set by its macromolecules rather than its water, lies off it.
    So the region's own line is fitted and the n voxels deviating most from it on one side are
    taken, the side that deviates more (a compact nucleus lengthens one tail; noise lengthens
    both alike): SN slope 0.70-0.82, measured/true 0.99-1.01 at SNR 14-43 per image. Scores
    and line use the neighbours only, so that the choice does not see the noise of the m_i
    averaged (as ``cr_top_volume`` with ``scores``); the line is fitted in that score space
    (fitted on the voxels' own values it kept less of the nucleus within a regime on
    development cohorts). V is a fixed volume below the nucleus's, so that the voxels lie in
    its core. A nucleus that lies near the line (MTR within a few units of what tissue of its
    MT-off signal has) is not found at these SNRs and its value falls towards the surrounding
    tissue's: within such a regime SN slope 0.03-0.48. The 3 x 3 in-plane neighbourhood, a
    least-squares line and one region's own evidence for the side were kept because 5 x 5 or
    3 x 3 x 3 neighbourhoods, quadratic or robust lines and a side decided from both
    hemispheres or from the voxels' own values did no better on those cohorts.
    """
    vals = np.asarray(values, dtype=float).ravel()
    s = np.asarray(mtr_scores, dtype=float).ravel()
    t = np.asarray(off_scores, dtype=float).ravel()
    if not (s.shape == vals.shape == t.shape):
        raise ValueError("values, mtr_scores and off_scores must have one value per voxel")
    ok = np.isfinite(vals) & np.isfinite(s) & np.isfinite(t)
    vals, s, t = vals[ok], s[ok], t[ok]
    n = n_top_voxels(volume_mm3, voxel_volume_mm3, min_voxels)
    if vals.size < max(int(min_voxels), MTR_NUCLEUS_MIN_REGION * n):
        return NAN
    tc = t - t.mean()
    sxx = float(tc @ tc)
    b = float(tc @ (s - s.mean())) / sxx if sxx > 0 else 0.0
    resid = s - s.mean() - b * tc
    d = resid - np.median(resid)
    order = np.argsort(d, kind="stable")
    low, high = order[:n], order[-n:]
    side = high if d[high].mean() > -d[low].mean() else low
    return float(np.mean(vals[side]))


def snr(signal_values: ArrayLike, noise_values: ArrayLike, min_voxels: int = MIN_VOXELS) -> float:
    """Two-region signal-to-noise ratio SNR = mean(S) / sd(N), unitless.

    S are voxels of a signal region (e.g. tissue), N voxels of a separate noise
    region; sd is the sample standard deviation (ddof=1). No correction is
    applied for the Rician/Rayleigh distribution of magnitude noise: if N is
    background air, sd(N) is about 0.655 times the true noise sigma, so this
    SNR is about 1.5 times higher than a corrected one. Use it to compare
    sessions of one protocol, not across protocols. NaN when either region has
    fewer than ``min_voxels`` finite voxels or sd(N) is 0.
    """
    s, noise = _finite(signal_values), _finite(noise_values)
    if s.size < min_voxels or noise.size < max(min_voxels, 2):
        return NAN
    sd = _sd(noise)
    if sd == 0:
        return NAN
    return float(np.mean(s) / sd)


def two_way_mean_squares(data: ArrayLike) -> tuple[int, int, float, float, float]:
    """Two-way ANOVA of an n subjects x k sessions array: ``(n, k, BMS, JMS, EMS)``.

    BMS = k·Σ(row mean - grand)² / (n - 1) (between subjects), JMS = n·Σ(column mean -
    grand)² / (k - 1) (between sessions), EMS = the rest of Σ(x - grand)² over
    (n - 1)(k - 1). Subjects with any non-finite value are dropped (complete cases); the
    mean squares are NaN when fewer than 2 subjects or 2 sessions remain.
    """
    x = np.asarray(data, dtype=float)
    if x.ndim != 2:
        raise ValueError("data must be a 2-D array (n_subjects x k_sessions)")
    x = x[np.all(np.isfinite(x), axis=1)]
    n, k = x.shape
    if n < 2 or k < 2:
        return n, k, NAN, NAN, NAN
    grand = x.mean()
    ss_rows = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((x - grand) ** 2) - ss_rows - ss_cols
    return n, k, float(ss_rows / (n - 1)), float(ss_cols / (k - 1)), float(ss_err / ((n - 1) * (k - 1)))


def icc_2_1(data: ArrayLike) -> float:
    """Shrout & Fleiss (1979) ICC(2,1): two-way random effects, absolute agreement,
    single measurement.

    ``data`` is n subjects x k sessions (or raters). With the two-way ANOVA
    mean squares BMS (between subjects, df n-1), JMS (between sessions,
    df k-1) and EMS (residual, df (n-1)(k-1)) of ``two_way_mean_squares``:

        ICC(2,1) = (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)

    Unitless, at most 1 (can be negative). Subjects with any non-finite value
    are dropped (complete cases). NaN when fewer than 2 subjects or 2 sessions
    remain, or when the denominator is 0 (no variance at all).
    """
    n, k, bms, jms, ems = two_way_mean_squares(data)
    if n < 2 or k < 2:
        return NAN
    denom = bms + (k - 1) * ems + k * (jms - ems) / n
    if denom == 0:
        return NAN
    return float((bms - ems) / denom)


def hedges_g(a: ArrayLike, b: ArrayLike, difference: float | None = None) -> float:
    """Hedges' g, the bias-corrected standardized mean difference of a minus b.

        s_p = sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2))
        d   = D / s_p,  D = mean(a) - mean(b) unless ``difference`` is given
        g   = J * d,  J = 1 - 3 / (4 (n_a + n_b) - 9)

    s_a, s_b are sample standard deviations (ddof=1). Unitless. ``difference``: the
    difference to standardise when it is not the raw one; the group statistics pass the
    covariate-adjusted OLS estimate, standardised by the unadjusted pooled sd of the two
    groups (Lakens 2013). Non-finite values are ignored; NaN when either group has fewer
    than 2 values or the pooled sd is 0.
    """
    x, y = _finite(a), _finite(b)
    na, nb = x.size, y.size
    if na < 2 or nb < 2:
        return NAN
    pooled_var = ((na - 1) * np.var(x, ddof=1) + (nb - 1) * np.var(y, ddof=1)) / (na + nb - 2)
    if pooled_var == 0:
        return NAN
    d = (x.mean() - y.mean() if difference is None else difference) / np.sqrt(pooled_var)
    j = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0)
    return float(j * d)
