"""The acquisition: what the scanner makes of a subject (T1w, NM slabs) and what its sidecars say.

``render_t1w`` images the whole head; ``acquire_nm`` plans an NM slab (``plan_slab``), moves the
head between repeats, images every repeat (``render_nm``: partial volume through sub-samples)
and adds the bias field and Rician noise, in the order of random draws the seed fixes.
``sidecar`` gives each image's JSON contents. The acquisition types are the pipeline's
(``nmbids.acquisitions.ACQ_TYPES``), named in lower case on the command line (``--acq``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .. import __version__
from ..acquisitions import ACQ_TYPES as PIPELINE_ACQ_TYPES
from .anatomy import TemplateModel
from .contrast import ACQ_CR_SCALE, contrasts_of, nucleus_signals
from .geometry import apply, grid_affine, rigid, rotation
from .regions import HEMIS, NUCLEI, ROIS, ref_region_at
from .writer import GENERATOR

if TYPE_CHECKING:
    from .options import Options

# --acq name -> the pipeline's acquisition type: {"gremt": "GREMT", "fse": "FSE", "mtr": "MTR"}
ACQ_TYPES = {t.lower(): t for t in PIPELINE_ACQ_TYPES}
if set(ACQ_TYPES) != set(ACQ_CR_SCALE):
    raise RuntimeError(f"nmbids.phantom simulates {sorted(ACQ_CR_SCALE)}; the pipeline's "
                       f"acquisition types are {list(PIPELINE_ACQ_TYPES)}")
# template mm the slab is centred on (subject anatomy): SN/VTA/LC, or pons-centred for FSE
SLAB_TARGET = {"gremt": (0.0, -22.0, -22.0), "mtr": (0.0, -22.0, -22.0), "fse": (0.0, -28.0, -25.0)}
T1W_SCALE = 4.0  # T1w image units per template T1 unit (template WM ~ 230)


# ----------------------------------------------------------------------------- sampling through phi

def _sample_idx(volume: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(volume, idx.reshape(3, -1), order=1, mode="constant",
                                   cval=0.0, prefilter=False)


class _GridDisplacement:
    """``u(q(v))`` on a voxel grid ``v = (i, j, k)``, ``q = C v``.

    ``u`` is evaluated exactly on a coarse lattice of the grid (about every 4 mm) and
    interpolated linearly, axis by axis, in between; ``u`` is smooth over ~15 mm, so the
    error is about 0.01-0.03 mm while the cost is a few array operations per voxel.
    """

    def __init__(self, deform, C, shape, zooms, k_range, step_mm: float = 4.0):
        self.C = C
        self.ax = []
        ranges = ((0.0, shape[0] - 1.0), (0.0, shape[1] - 1.0), k_range)
        for (lo, hi), z in zip(ranges, zooms):
            st = max(step_mm / z, 1.0)
            m = max(int(math.ceil((hi - lo) / st)) + 1, 2)
            self.ax.append(lo + st * np.arange(m))
        g = np.stack(np.meshgrid(*self.ax, indexing="ij")).reshape(3, -1)
        q = apply(C, g)
        self.U = (deform(q) - q).reshape(3, *[len(a) for a in self.ax]).astype(np.float32)

    def at(self, i, j, k) -> np.ndarray:
        """Displacement (3, len(i), len(j), len(k)) at the grid coordinates given per axis."""
        U = self.U
        for axis, x in ((3, k), (2, j), (1, i)):
            lat = self.ax[axis - 1]
            c = (np.asarray(x, float) - lat[0]) / (lat[1] - lat[0])
            i0 = np.clip(np.floor(c).astype(int), 0, len(lat) - 2)
            w = (c - i0).astype(np.float32)
            shp = [1, 1, 1, 1]
            shp[axis] = -1
            a = np.take(U, i0, axis=axis)
            U = a + (np.take(U, i0 + 1, axis=axis) - a) * w.reshape(shp)
        return U


def _template_index(tm: TemplateModel, C: np.ndarray, U: np.ndarray, i, j, k) -> np.ndarray:
    """Template voxel indices (3, ni, nj, nk) of grid points ``t = C v + U``."""
    M = tm.inv @ C
    R = tm.inv[:3, :3]
    i = np.asarray(i, float)[:, None, None]
    j = np.asarray(j, float)[None, :, None]
    k = np.asarray(k, float)[None, None, :]
    out = np.empty((3,) + U.shape[1:], np.float64)
    for a in range(3):
        out[a] = M[a, 0] * i + M[a, 1] * j + M[a, 2] * k + M[a, 3]
        for b in range(3):
            if R[a, b] != 0:
                out[a] += R[a, b] * U[b]
    return out


def _world_points(C: np.ndarray, U: np.ndarray, i, j, k) -> np.ndarray:
    """Template mm (3, N) of grid points ``t = C v + U``."""
    return _template_index_like(C, U, i, j, k).reshape(3, -1)


def _template_index_like(C, U, i, j, k):
    i = np.asarray(i, float)[:, None, None]
    j = np.asarray(j, float)[None, :, None]
    k = np.asarray(k, float)[None, None, :]
    out = np.empty((3,) + U.shape[1:], np.float64)
    for a in range(3):
        out[a] = C[a, 0] * i + C[a, 1] * j + C[a, 2] * k + C[a, 3] + U[a]
    return out


# ----------------------------------------------------------------------------- scanner effects

def bias_field(rng: np.random.Generator, amplitude: float):
    """Smooth multiplicative field exp(sum c_i P_i(s / 100 mm)), fixed to the scanner."""
    coef = rng.normal(0.0, amplitude / 2.5, 9)

    def field_at(s: np.ndarray) -> np.ndarray:
        x, y, z = s / 100.0
        terms = (x, y, z, x * x - 0.33, y * y - 0.33, z * z - 0.33, x * y, x * z, y * z)
        return np.exp(sum(c * t for c, t in zip(coef, terms)))
    return field_at


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float, zero_fill: int = 1,
           slice_zero_fill: int = 1) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of sd ``sigma`` per channel: white
    noise, or with ``zero_fill`` (in plane, axes 0 and 1) or ``slice_zero_fill`` (through the
    slices, axis 2) > 1 the noise of ``zero_filled_noise``."""
    factors = (zero_fill, zero_fill, slice_zero_fill)
    if max(factors) > 1:
        noise = zero_filled_noise(rng, signal.shape, factors)
        n1, n2 = (noise.real * sigma).astype(np.float32), (noise.imag * sigma).astype(np.float32)
    else:
        n1 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
        n2 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    return np.sqrt((signal + n1) ** 2 + n2 ** 2)


def zero_filled_noise(rng: np.random.Generator, shape: tuple, factors) -> np.ndarray:
    """Complex noise of sd 1 per channel as a scanner's zero-filled reconstruction makes it:
    white noise on a grid ``factors[a]`` times coarser along each axis a (an int: that factor
    along axes 0 and 1, in plane), its spectrum padded with zeros to ``shape`` along those axes
    (adjacent voxels then share their noise: at factor 2 their correlation is a sinc's, 0.64).
    A 3D slab interpolated through its slices is factor 2 along the slice axis (2)."""
    if np.isscalar(factors):
        factors = (factors, factors)
    factors = tuple(int(f) for f in factors) + (1,) * (len(shape) - len(factors))
    axes = tuple(a for a, f in enumerate(factors) if f > 1)
    acquired = tuple(-(-n // f) for n, f in zip(shape, factors))  # the acquired matrix
    coarse = rng.standard_normal(acquired) + 1j * rng.standard_normal(acquired)
    spectrum = np.fft.fftshift(np.fft.fftn(coarse, axes=axes), axes=axes)
    big = tuple(n * f for n, f in zip(acquired, factors))
    padded = np.zeros(big, complex)
    padded[tuple(slice((b - n) // 2, (b - n) // 2 + n) for b, n in zip(big, acquired))] = spectrum
    fine = np.fft.ifftn(np.fft.ifftshift(padded, axes=axes), axes=axes) * float(np.prod(factors))
    return fine[tuple(slice(0, n) for n in shape)]


def to_int16(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 32767).astype(np.int16)


# ----------------------------------------------------------------------------- images

def render_t1w(tm, A, deform, res, rng, snr, bias, noise_free):
    """T1w on an axial LAS grid covering the head; returns (int16 array, affine)."""
    lo, hi = tm.head_lo, tm.head_hi
    corners = np.array(np.meshgrid(*[[lo[i], hi[i]] for i in range(3)], indexing="ij")).reshape(3, -1)
    s = apply(np.linalg.inv(A), corners)
    s_lo, s_hi = s.min(1) - 6.0, s.max(1) + 6.0
    shape = tuple(int(v) for v in np.ceil((s_hi - s_lo) / res).astype(int))
    center = (s_lo + s_hi) / 2
    aff = grid_affine(np.diag([-1.0, 1.0, 1.0]), (res,) * 3, shape, center)
    out = np.zeros(shape, np.float32)
    C = A @ aff
    gd = _GridDisplacement(deform, C, shape, (res,) * 3, (0.0, shape[2] - 1.0))
    bias_at = None if noise_free or bias <= 0 else bias_field(rng, bias)
    ii, jj = np.arange(shape[0]), np.arange(shape[1])
    step = max(1, int(1_000_000 // (shape[0] * shape[1])))
    for k0 in range(0, shape[2], step):
        ks = np.arange(k0, min(k0 + step, shape[2]))
        U = gd.at(ii, jj, ks)
        val = _sample_idx(tm.t1, _template_index(tm, C, U, ii, jj, ks)) * T1W_SCALE
        if bias_at is not None:
            val *= bias_at(_template_index_like(aff, np.zeros_like(U), ii, jj, ks).reshape(3, -1))
        out[:, :, k0:k0 + len(ks)] = val.reshape(shape[0], shape[1], len(ks))
    if not noise_free:
        out = rician(rng, out, 230.0 * T1W_SCALE / snr)  # template WM ~ 230
    return to_int16(out), aff


# The NM slab's voxel axes (columns, scanner RAS) before its tilt, by the plane of its slices
# (the third axis is the slices'): the usual oblique axial slab (LAS), and coronal and sagittal
# slabs, whose in-plane FOV (``--nm-fov``) then spans L-R x S-I and A-P x S-I.
SLAB_AXES = {"axial": np.diag([-1.0, 1.0, 1.0]),
             "coronal": np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
             "sagittal": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
NM_ORIENTATIONS = tuple(SLAB_AXES)


@dataclass
class Slab:
    """An NM slab's grid in scanner mm (the position of repeat 1)."""

    affine: np.ndarray  # voxel -> scanner (repeat 1 position)
    shape: tuple[int, int, int]
    tilt_deg: float
    center: np.ndarray
    inplane: float
    slice_mm: float


def plan_slab(rng, A, P, deform, target, opts: Options, kind: str) -> Slab:
    """An oblique slab (axial unless ``--nm-orientation``) centred on the subject's anatomy at
    template mm ``target``: tilted about the L-R axis by up to ``--max-tilt``, offset up to 2 mm;
    FSE slices for ``kind`` fse."""
    t = np.asarray(target, float)[:, None]
    q = deform.inverse(t)
    s = apply(P @ np.linalg.inv(A), q)[:, 0]
    tilt = float(rng.uniform(-opts.max_tilt, opts.max_tilt))
    rot = rotation(tilt, 0.0, 0.0)
    offset = rng.uniform(-2.0, 2.0, 3)
    axes = rot @ SLAB_AXES[opts.nm_orientation]  # tilted about the L-R axis
    center = s + rot @ offset
    slice_mm, n_slices = ((opts.fse_slice, opts.fse_slices) if kind == "fse"
                          else (opts.nm_slice, opts.nm_slices))
    nx = max(1, int(round(opts.nm_fov[0] / opts.nm_inplane)))
    ny = max(1, int(round(opts.nm_fov[1] / opts.nm_inplane)))
    shape = (nx, ny, n_slices)
    aff = grid_affine(axes, (opts.nm_inplane, opts.nm_inplane, slice_mm), shape, center)
    return Slab(aff, shape, tilt, center, opts.nm_inplane, slice_mm)


def render_nm(tm, nuclei, deform, slab: Slab, C_list, contrasts, values, s0: float = 1.0,
              truth_geometry: bool = True):
    """Noise-free, bias-free NM volumes, one per (C, contrast) pair.

    ``C_list[r]`` maps slab voxel -> template-affine coordinates q for repeat r; ``contrasts[r]``
    is the contrast name (tissue signals in units of ``s0``) and ``values[r]`` the 6 nucleus
    signals (image units). Returns the volumes and, for
    repeat 0, the nucleus fractions (nvox, 6) and the reference-core labels (nvox,).
    """
    shape = slab.shape
    nvox = int(np.prod(shape))
    ii, jj, kk = (np.arange(n) for n in shape)
    zooms = (slab.inplane, slab.inplane, slab.slice_mm)
    n_sub = max(4, int(math.ceil(slab.slice_mm / 0.5)))
    offs = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    n_fine = max(5, int(math.ceil(slab.slice_mm / 0.4)))
    fine_k = (np.arange(n_fine) + 0.5) / n_fine - 0.5
    fine_ij = np.array([-0.25, 0.25])
    fo = np.stack(np.meshgrid(fine_ij, fine_ij, fine_k, indexing="ij")).reshape(3, -1)
    half_diag = 0.5 * np.linalg.norm(slab.affine[:3, :3] @ np.ones(3)) + 0.5
    outs, frac_out, refcore = [], None, None
    for r, (C, cname, vals) in enumerate(zip(C_list, contrasts, values)):
        cmap = tm.contrast(cname)
        gd = _GridDisplacement(deform, C, shape, zooms, (-0.5, shape[2] - 0.5))
        acc = np.zeros(nvox, np.float64)
        rc_min = np.ones(nvox, np.float32) if (r == 0 and truth_geometry) else None
        for o in offs:
            U = gd.at(ii, jj, kk + o)
            idx = _template_index(tm, C, U, ii, jj, kk + o)
            acc += _sample_idx(cmap, idx)
            if rc_min is not None:
                np.minimum(rc_min, _sample_idx(tm.refclean, idx), out=rc_min)
        acc *= s0 / n_sub
        # nuclei: fine sub-samples of the voxels near any nucleus
        tc = _world_points(C, gd.at(ii, jj, kk), ii, jj, kk)
        cand = np.zeros(nvox, bool)
        for lo, hi in nuclei.bboxes():
            cand |= np.all((tc >= (lo - half_diag)[:, None]) & (tc <= (hi + half_diag)[:, None]),
                           axis=0)
        idx = np.flatnonzero(cand)
        frac = np.zeros((len(idx), len(NUCLEI)))
        if len(idx):
            v0 = np.stack(np.unravel_index(idx, shape)).astype(float)
            pts = (v0[:, :, None] + fo[:, None, :]).reshape(3, -1)
            lab = nuclei.labels_at(deform(apply(C, pts))).reshape(len(idx), fo.shape[1])
            for k in range(len(NUCLEI)):
                frac[:, k] = (lab == k + 1).mean(1)
            tot = frac.sum(1)
            acc[idx] = (1 - tot) * acc[idx] + frac @ np.asarray(vals)
        outs.append(acc.reshape(shape))
        if r == 0 and truth_geometry:
            frac_full = np.zeros((nvox, len(NUCLEI)), np.float32)
            frac_full[idx] = frac
            frac_out = frac_full
            reg = ref_region_at(tc)
            core = (rc_min >= 0.999) & (frac_full.sum(1) == 0)
            refcore = np.where(core, reg, 0).astype(np.uint8)
    return outs, frac_out, refcore


@dataclass
class NMAcquisition:
    """One NM acquisition as imaged: the slab, the motion, the int16 images and what made them."""

    acq: str  # "gremt" | "fse" | "mtr"
    slab: Slab
    s0: float  # intensity scale (WM signal, image units)
    snr: float | None  # per repeat, in WM (None: noise-free)
    contrasts: list[str]  # contrast of each repeat
    acq_cr: dict  # ROI -> {hemi: CR of this acquisition}
    motions: list[np.ndarray]  # 4x4 (scanner mm) per repeat, repeat 1 -> repeat r
    motion_params: list[list[float]]  # [tx, ty, tz (mm), rx, ry, rz (deg)] per repeat
    motion_mm: list[float]  # mean displacement of the slab's voxel centres per repeat
    images: list[np.ndarray]  # int16, one per repeat
    fractions: np.ndarray  # (nvox, 6) fraction of each voxel in each nucleus (repeat 1 grid)
    refcore: np.ndarray  # (nvox,) label 7-9 where a voxel is wholly reference tissue, else 0
    bias: np.ndarray | float  # the multiplicative field on the slab grid (1.0 without one)

    @property
    def n_repeats(self) -> int:
        return len(self.images)


def acquire_nm(acq: str, opts: Options, tm, nuclei, deform, A, cr, snr_scale: float,
               rng: np.random.Generator) -> NMAcquisition:
    """Image one NM acquisition of a subject (``cr``: its CR in GRE-MT units, ROI -> hemi)."""
    slab = plan_slab(rng, A, np.eye(4), deform, SLAB_TARGET[acq], opts, acq)
    s0 = float(1000.0 * rng.uniform(0.8, 1.25))
    snr = None if opts.noise_free else float(opts.snr * snr_scale)
    sigma = None if snr is None else s0 / snr
    n_rep = 2 if acq == "mtr" else opts.repeats
    # motion between repeats, about the slab centre
    motions = [np.eye(4)]
    params = [[0.0] * 6]
    for _ in range(1, n_rep):
        tr = np.clip(rng.normal(0, opts.motion_mm / 2, 3), -opts.motion_mm, opts.motion_mm)
        ro = np.clip(rng.normal(0, opts.motion_deg / 2, 3), -opts.motion_deg, opts.motion_deg)
        motions.append(rigid(ro, tr, slab.center))
        params.append(list(tr) + list(ro))
    vox = np.indices(slab.shape).reshape(3, -1)[:, ::97].astype(float)
    s_vox = apply(slab.affine, vox)
    motion_mm = [float(np.linalg.norm(apply(M, s_vox) - s_vox, axis=0).mean()) for M in motions]
    acq_cr = {roi: {h: cr[roi][h] * ACQ_CR_SCALE[acq][roi] for h in HEMIS} for roi in ROIS}
    contrasts = contrasts_of(acq, n_rep)

    C_list = [A @ np.linalg.inv(M) @ slab.affine for M in motions]
    clean, frac, refcore = render_nm(tm, nuclei, deform, slab, C_list, contrasts,
                                     [nucleus_signals(c, acq_cr, s0) for c in contrasts], s0=s0)
    imgs, bias = [], 1.0
    if opts.noise_free:
        imgs = [c for c in clean]
    else:
        bias_at = bias_field(rng, opts.bias) if opts.bias > 0 else None
        if bias_at is not None:
            bias = bias_at(apply(slab.affine, np.indices(slab.shape).reshape(3, -1).astype(float)))
            bias = (bias / bias_at(slab.center[:, None])).reshape(slab.shape)
        imgs = [rician(rng, (c * bias).astype(np.float32), sigma, opts.nm_zero_fill, opts.nm_slice_zero_fill)
                for c in clean]
    return NMAcquisition(acq=acq, slab=slab, s0=s0, snr=snr, contrasts=contrasts, acq_cr=acq_cr,
                         motions=motions, motion_params=params, motion_mm=motion_mm,
                         images=[to_int16(x) for x in imgs], fractions=frac, refcore=refcore,
                         bias=bias)


# ----------------------------------------------------------------------------- sidecars

COMMON_META = {"Manufacturer": "Simulated", "ManufacturersModelName": GENERATOR,
               "SoftwareVersions": __version__, "MagneticFieldStrength": 3,
               "ReceiveCoilName": "simulated 32-channel head coil"}


def sidecar(kind: str, slab: Slab | None, site: str, mt_state: bool | None = None) -> dict:
    """JSON sidecar of an image: ``"t1w"``, or an NM kind (``"mtr"``: one of the pair, ``mt_state``)."""
    meta = dict(COMMON_META, InstitutionName=site, StationName=f"{site}-scanner")
    if kind == "t1w":
        meta.update(MRAcquisitionType="3D", ScanningSequence="GR\\IR", SequenceVariant="SK\\SP\\MP",
                    SequenceName="*tfl3d1_16ns", PulseSequenceType="MPRAGE", RepetitionTime=2.3,
                    EchoTime=0.00298, InversionTime=0.9, FlipAngle=9)
        return meta
    if kind == "gremt":
        meta.update(MRAcquisitionType="2D", ScanningSequence="GR", SequenceVariant="SP\\MTC",
                    SequenceName="*fl2d1", PulseSequenceType="GRE-MT", MTState=True,
                    MTOffsetFrequency=1200, MTPulseShape="GAUSSIAN", MTPulseDuration=0.01,
                    MTPulseBandwidth=300, MTNumberOfPulses=1, FlipAngle=40, EchoTime=0.0039,
                    RepetitionTime=0.26)
    elif kind == "fse":
        meta.update(MRAcquisitionType="2D", ScanningSequence="SE", SequenceVariant="SK\\SP",
                    SequenceName="*tse2d1_3", PulseSequenceType="TSE", EchoTrainLength=3,
                    MTState=False, FlipAngle=120, EchoTime=0.011, RepetitionTime=0.6)
    elif kind == "mtr":
        meta.update(MRAcquisitionType="2D", ScanningSequence="GR",
                    SequenceVariant="SP\\MTC" if mt_state else "SP", SequenceName="*fl2d1",
                    PulseSequenceType="GRE", MTState=bool(mt_state), FlipAngle=20,
                    EchoTime=0.0037, RepetitionTime=0.2)
        if mt_state:
            meta.update(MTOffsetFrequency=1200, MTPulseShape="GAUSSIAN", MTPulseDuration=0.01,
                        MTPulseBandwidth=300, MTNumberOfPulses=1)
    if slab is not None:
        meta["SliceThickness"] = slab.slice_mm
    return meta

