"""The anatomy: the template's head, and the map that makes a subject of it.

``template_model`` holds the template's tissue maps on a padded grid, a head shell around the
brain (CSF, skull, scalp layers), the pipeline's reference ellipsoids painted as homogeneous
reference tissue, and the noise-free signal map of each contrast. A subject is that head
under ``t = phi(s) = q + u(q)``, ``q = A s`` (package docstring, "Anatomy"): ``random_affine``
draws ``A`` and ``make_deformation`` the smooth displacement ``u``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import nibabel as nb
import numpy as np
from scipy import ndimage

from ..templates import get_template, tissue_probabilities
from .contrast import CONTRASTS, REF_TISSUE
from .geometry import apply, ellipsoid_mask, rotation
from .regions import REF_ELLIPSOIDS

# T1w intensities of the head shell (template T1 units, 0-255).
SHELL_T1 = {"CSF": 45.0, "skull": 15.0, "scalp": 190.0}
SHELL_LAYERS_MM = {"CSF": (0.0, 2.5), "skull": (2.5, 7.0), "scalp": (7.0, 12.0)}
PAD_MM = 16
# the reference ellipsoids are painted this much larger than the pipeline's
REF_PAINT_MARGIN_MM = 2.0
DEFORM_SPACING_MM = 4.0
DEFORM_SIGMA_MM = 15.0


# ----------------------------------------------------------------------------- template model

@dataclass
class TemplateModel:
    """The template's head on a padded grid: tissue maps, shell, painted reference regions."""

    name: str
    source: str
    affine: np.ndarray
    inv: np.ndarray
    shape: tuple[int, int, int]
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    skull: np.ndarray
    scalp: np.ndarray
    m_cc: np.ndarray
    m_pt: np.ndarray
    refclean: np.ndarray
    head_lo: np.ndarray
    head_hi: np.ndarray
    brain_lo: np.ndarray
    brain_hi: np.ndarray
    _contrast: dict = field(default_factory=dict)

    def contrast(self, name: str) -> np.ndarray:
        """Noise-free signal map (fractions of S0) of one contrast, on the template grid."""
        if name not in self._contrast:
            w = CONTRASTS[name]
            tissue = self.gm + self.wm
            base = (w["GM"] * self.gm + w["WM"] * self.wm + w["CSF"] * self.csf
                    + w["skull"] * self.skull + w["scalp"] * self.scalp)
            m = self.m_cc + self.m_pt
            ref = w[REF_TISSUE["CC"]] * self.m_cc + w[REF_TISSUE["PT"]] * self.m_pt
            # inside the painted regions, CSF probabilities under 5 % count as tissue
            csf_p = np.clip((self.csf - 0.05) / 0.95, 0, 1)
            out = (1 - m) * base + ref * (tissue + self.csf - csf_p) + m * w["CSF"] * csf_p
            self._contrast[name] = out.astype(np.float32)
        return self._contrast[name]


def _soft_layer(d: np.ndarray, a: float, b: float, width: float = 0.5) -> np.ndarray:
    def sig(x):
        return 0.5 * (1 + np.tanh(x / (2 * width)))
    return sig(d - a) - sig(d - b)


def template_model(name: str | None = None) -> TemplateModel:
    """The template's maps on a padded grid around its head (cached per process)."""
    return _template_model(get_template(name))


@lru_cache(maxsize=2)
def _template_model(tpl) -> TemplateModel:
    gm, wm, csf, aff = tissue_probabilities(tpl)
    t1 = np.asarray(nb.load(str(tpl.t1w)).dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(str(tpl.brain_mask)).dataobj) > 0
    ijk = np.argwhere(mask)
    lo_i, hi_i = ijk.min(0), ijk.max(0)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
    pad = np.ceil(PAD_MM / zooms).astype(int)

    def crop(a):
        sl = tuple(slice(max(lo_i[i] - pad[i], 0), min(hi_i[i] + pad[i] + 1, a.shape[i]))
                   for i in range(3))
        c = a[sl]
        before = [lo_i[i] - pad[i] - sl[i].start for i in range(3)]  # <= 0
        widths = [(-before[i], (hi_i[i] + pad[i] + 1) - sl[i].stop) for i in range(3)]
        return np.pad(c, widths, mode="constant")

    gm, wm, csf, t1, mask = (crop(np.asarray(a)) for a in (gm, wm, csf, t1, mask))
    gm, wm, csf, t1 = (a.astype(np.float32) for a in (gm, wm, csf, t1))
    new_aff = aff.copy()
    new_aff[:3, 3] = apply(aff, (lo_i - pad).astype(float)[:, None])[:, 0]
    total = gm + wm + csf
    over = total > 1
    for a in (gm, wm, csf):
        a[over] /= total[over]
    gm[~mask] = wm[~mask] = csf[~mask] = 0
    # brain only (TemplateFlow's T1w is a whole head), WM at ~230 as in nilearn's template
    t1 = t1 * mask
    t1 *= np.float32(230.0 / max(float(np.median(t1[wm > 0.9])), 1e-6))

    d = ndimage.distance_transform_edt(~mask, sampling=zooms).astype(np.float32)
    shape = mask.shape
    if not np.allclose(new_aff[:3, :3], np.diag(np.diag(new_aff[:3, :3]))):
        raise ValueError("template grids must be axis-aligned")
    axes = [new_aff[i, i] * np.arange(shape[i]) + new_aff[i, 3] for i in range(3)]
    brain_pts = apply(new_aff, np.argwhere(mask).T.astype(float))
    brain_lo, brain_hi = brain_pts.min(1), brain_pts.max(1)
    below = (0.5 * (1 + np.tanh((axes[2] - brain_lo[2]) / 1.0))).astype(np.float32)
    outside = (~mask).astype(np.float32) * below[None, None, :]  # no head shell under the cut
    csf_shell = _soft_layer(d, *SHELL_LAYERS_MM["CSF"]) * outside
    skull = _soft_layer(d, *SHELL_LAYERS_MM["skull"]) * outside
    scalp = _soft_layer(d, *SHELL_LAYERS_MM["scalp"]) * outside
    del d, outside
    csf_all = csf + csf_shell
    head = t1 + SHELL_T1["CSF"] * csf_shell + SHELL_T1["skull"] * skull + SHELL_T1["scalp"] * scalp

    # reference paint: the pipeline's CC and PT ellipsoids, enlarged, with soft edges
    m_cc = np.zeros(shape, np.float32)
    m_pt = np.zeros(shape, np.float32)
    sigma = 0.6 / zooms
    paint = {"CC": m_cc, "PT": m_pt}
    for _, roi, center, semi in REF_ELLIPSOIDS:
        target = paint[roi]
        ext = np.asarray(semi) + REF_PAINT_MARGIN_MM + 3.0
        sl = []
        for i in range(3):
            lo_w, hi_w = sorted([center[i] - ext[i], center[i] + ext[i]])
            a = int(np.floor((lo_w - new_aff[i, 3]) / new_aff[i, i]))
            b = int(np.ceil((hi_w - new_aff[i, 3]) / new_aff[i, i])) + 1
            a, b = sorted((a, b))
            sl.append(slice(max(a, 0), min(b, shape[i])))
        sub = np.stack(np.meshgrid(*[axes[i][sl[i]] for i in range(3)], indexing="ij"))
        inside = ellipsoid_mask(sub.reshape(3, -1), center, semi, REF_PAINT_MARGIN_MM)
        block = ndimage.gaussian_filter(inside.reshape(sub.shape[1:]).astype(np.float32), sigma)
        target[tuple(sl)] = np.maximum(target[tuple(sl)], block)
    # where a painted voxel is pure reference tissue (see TemplateModel.contrast)
    refclean = np.maximum(m_cc, m_pt) * (gm + wm + csf_all - np.clip((csf_all - 0.05) / 0.95, 0, 1))
    head_lo = brain_lo - np.array([12.0, 12.0, 0.0])
    head_hi = brain_hi + 12.0
    return TemplateModel(
        name=tpl.name, source=tpl.source, affine=new_aff, inv=np.linalg.inv(new_aff), shape=shape,
        t1=head.astype(np.float32), gm=gm, wm=wm, csf=csf_all.astype(np.float32),
        skull=skull.astype(np.float32), scalp=scalp.astype(np.float32), m_cc=m_cc, m_pt=m_pt,
        refclean=refclean.astype(np.float32), head_lo=head_lo, head_hi=head_hi,
        brain_lo=brain_lo, brain_hi=brain_hi)


# ----------------------------------------------------------------------------- subject

@dataclass
class Deformation:
    """The smooth displacement ``u`` of a subject: ``phi(q) = q + u(q)`` in template mm."""

    u: np.ndarray  # (3, gx, gy, gz) displacement, template mm
    affine: np.ndarray  # grid index -> template mm
    inv: np.ndarray
    jac: np.ndarray  # (3, 3, gx, gy, gz) du_i / dx_j
    max_mm: float
    rms_mm: float

    def __call__(self, q: np.ndarray) -> np.ndarray:
        """phi: q (template-affine coordinates, (3, N)) -> t = q + u(q)."""
        idx = apply(self.inv, q)
        return q + np.stack([ndimage.map_coordinates(self.u[c], idx, order=1, mode="nearest",
                                                     prefilter=False) for c in range(3)])

    def inverse(self, t: np.ndarray, n_iter: int = 6) -> np.ndarray:
        q = t.copy()
        for _ in range(n_iter):
            q = t - (self(q) - q)
        return q

    def det_jacobian(self, q: np.ndarray) -> np.ndarray:
        idx = apply(self.inv, q)
        j = np.empty((q.shape[1], 3, 3))
        for a in range(3):
            for b in range(3):
                j[:, a, b] = ndimage.map_coordinates(self.jac[a, b], idx, order=1, mode="nearest",
                                                     prefilter=False)
            j[:, a, a] += 1.0
        return np.linalg.det(j)


def make_deformation(tm: TemplateModel, rng: np.random.Generator, max_mm: float) -> Deformation:
    """Smoothed Gaussian noise on a 4 mm grid (sigma 15 mm), scaled to max |u| = ``max_mm`` in the brain."""
    lo = tm.head_lo - 24.0
    hi = tm.head_hi + 24.0
    n = np.ceil((hi - lo) / DEFORM_SPACING_MM).astype(int) + 1
    aff = np.diag([DEFORM_SPACING_MM] * 3 + [1.0])
    aff[:3, 3] = lo
    noise = rng.standard_normal((3, *n)).astype(np.float64)
    sig = DEFORM_SIGMA_MM / DEFORM_SPACING_MM
    u = np.stack([ndimage.gaussian_filter(noise[c], sig, mode="reflect") for c in range(3)])
    # amplitude measured inside the brain box
    b_lo = np.floor((tm.brain_lo - lo) / DEFORM_SPACING_MM).astype(int)
    b_hi = np.ceil((tm.brain_hi - lo) / DEFORM_SPACING_MM).astype(int) + 1
    inner = u[:, b_lo[0]:b_hi[0], b_lo[1]:b_hi[1], b_lo[2]:b_hi[2]]
    mag = np.sqrt((inner ** 2).sum(0))
    scale = (max_mm / mag.max()) if max_mm > 0 else 0.0
    u *= scale
    mag *= scale
    jac = np.stack([np.stack(np.gradient(u[a], DEFORM_SPACING_MM)) for a in range(3)])
    return Deformation(u=u.astype(np.float32), affine=aff, inv=np.linalg.inv(aff),
                       jac=jac.astype(np.float32), max_mm=float(mag.max()),
                       rms_mm=float(np.sqrt((mag ** 2).mean())))


def random_affine(rng: np.random.Generator) -> np.ndarray:
    """Subject scanner mm -> template mm: T R S."""
    rot = rng.uniform(-8, 8, 3)
    trans = rng.uniform(-8, 8, 3)
    scale = rng.uniform(0.95, 1.05, 3)
    m = np.eye(4)
    m[:3, :3] = rotation(*rot) @ np.diag(scale)
    m[:3, 3] = trans
    return m

