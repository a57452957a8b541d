"""Report figures: SVG files drawn from derivative images already on disk.

Rules: a figure only *draws* what the pipeline wrote (images, label maps, table rows);
it never recomputes a measure. Every function here takes paths (and rows of tables as
strings), writes one SVG atomically and raises on failure; the caller decides what
the report says when a file is missing or a figure cannot be drawn.

Matplotlib runs on the Agg backend with ``MPLCONFIGDIR`` pointing to a private
temporary folder when it is unset or not writable, so a read-only ``HOME`` works.
"""
from __future__ import annotations

import io
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..mplconfig import configure_matplotlib_env
from .utils import FigureUnavailable


def _configure_matplotlib() -> None:
    """Agg backend and a writable config/cache folder that is never under ``~``."""
    configure_matplotlib_env()
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg", force=True)
    else:  # pyplot already imported by someone else: switch only if it is not Agg
        import matplotlib.pyplot as plt

        if matplotlib.get_backend().lower() != "agg":
            plt.switch_backend("Agg")


_configure_matplotlib()

import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..outputs import atomic_write_bytes  # noqa: E402
from .utils import NA, Label, read_tsv  # noqa: E402
from .warnings import CR_MIN, as_float  # noqa: E402

matplotlib.rcParams.update({
    "svg.fonttype": "none",  # text stays text: smaller files, searchable
    "svg.hashsalt": "nmbids",  # deterministic element ids
    "font.size": 9,
})

#: MNI box around the midbrain and pons (RAS mm): x, y, z ranges.
BRAINSTEM_BOX = ((-30.0, 30.0), (-50.0, 10.0), (-45.0, 5.0))
#: Cuts used on template-space figures (inside BRAINSTEM_BOX).
BRAINSTEM_CUTS = (("z", (-40, -30, -20, -10, 0)), ("y", (-40, -30, -20, -10)),
                  ("x", (-10, -5, 0, 5, 10)))
#: Display range of CR maps (unitless); matches the plausibility range of the warnings.
CR_DISPLAY = (CR_MIN, 0.4)

ROI_COLORS = {"SN": "#ff7f0e", "VTA": "#ffd92f", "LC": "#e7298a", "CC": "#1f9bff", "PT": "#2ecc71"}
_FALLBACK_COLORS = ("#2ca02c", "#bcbd22", "#9467bd", "#8c564b", "#7f7f7f", "#d62728")
LC_ORDER = ("LC_rostral", "LC_middle", "LC_caudal")


def roi_color(roi: str) -> str:
    if roi in ROI_COLORS:
        return ROI_COLORS[roi]
    base = roi.split("_")[0]
    if base in ROI_COLORS:
        return ROI_COLORS[base]
    return _FALLBACK_COLORS[sum(map(ord, roi)) % len(_FALLBACK_COLORS)]


# --------------------------------------------------------------------------- helpers
def _save(fig, out: Path) -> Path:
    """Write ``fig`` as SVG, atomically (a killed job never leaves half a figure)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="svg", metadata={"Date": None}, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())


def load3d(path: Path) -> nb.Nifti1Image:
    """Load an image as float32 3D (first volume of a 4D image; non-finite kept)."""
    img = nb.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{Path(path).name}: expected a 3D image, got shape {data.shape}")
    return nb.Nifti1Image(data, img.affine)


def _finite0(img: nb.Nifti1Image) -> nb.Nifti1Image:
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return nb.Nifti1Image(data, img.affine)


def support(img: nb.Nifti1Image) -> np.ndarray:
    """Voxels that hold signal: finite and non-zero (outside a resampled slab is 0 or NaN)."""
    data = np.asarray(img.dataobj)
    return np.isfinite(data) & (data != 0)


def world_bounds(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """RAS bounding box ``[[xmin, xmax], [ymin, ymax], [zmin, zmax]]`` of a voxel mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = nb.affines.apply_affine(affine, corners)
    return np.stack([world.min(0), world.max(0)], axis=1)


def crop(img: nb.Nifti1Image, box: Sequence[Sequence[float]], margin: float = 0.0) -> nb.Nifti1Image:
    """The part of ``img`` inside a RAS box (plus ``margin`` mm); the whole image if they miss."""
    box = np.asarray(box, dtype=float)
    lo, hi = box[:, 0] - margin, box[:, 1] + margin
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    vox = nb.affines.apply_affine(np.linalg.inv(img.affine), corners)
    shape = np.array(img.shape[:3])
    v0 = np.clip(np.floor(vox.min(0)).astype(int), 0, shape)
    v1 = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, shape)
    if np.any(v1 - v0 < 2):
        return img
    return img.slicer[v0[0]:v1[0], v0[1]:v1[1], v0[2]:v1[2]]


def resample_like(img: nb.Nifti1Image, target: nb.Nifti1Image, nearest: bool = False) -> nb.Nifti1Image:
    """``img`` on ``target``'s grid: sliced when that grid is a box of ``img``'s own (an image
    cropped from one on the same grid: nothing to interpolate), resampled otherwise."""
    from nilearn.image import resample_to_img

    start = nb.affines.apply_affine(np.linalg.inv(img.affine), target.affine[:3, 3])  # its first voxel
    stop = np.round(start).astype(int) + np.array(target.shape[:3])
    if (np.allclose(img.affine[:3, :3], target.affine[:3, :3], atol=1e-6)
            and np.allclose(start, np.round(start), atol=1e-4) and np.all(np.round(start) >= 0)
            and np.all(stop <= np.array(img.shape[:3]))):
        a, b, c = np.round(start).astype(int)
        return img.slicer[a:stop[0], b:stop[1], c:stop[2]]
    return resample_to_img(img, target, interpolation="nearest" if nearest else "linear",
                           force_resample=True, copy_header=True)


def _display_range(img: nb.Nifti1Image, mask: np.ndarray | None = None) -> tuple[float, float]:
    data = np.asarray(img.dataobj, dtype=np.float32)
    sel = np.isfinite(data) & (data != 0)
    if mask is not None:
        sel &= mask
    vals = data[sel]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _mosaic(bg: nb.Nifti1Image, rows: Sequence[tuple[str, Sequence[float]]],
            layers: Iterable[Callable] = (), width: float = 10.0,
            row_height: float = 2.1, vrange: tuple[float, float] | None = None,
            legend: Sequence = (), colorbar: dict | None = None):
    """One nilearn display per row (``display_mode``, cut coordinates); layers drawn on each."""
    from nilearn import plotting

    layers = list(layers)
    extra = (0.75 if colorbar else 0.35) if (legend or colorbar) else 0.0
    height = row_height * len(rows) + extra
    fig = plt.figure(figsize=(width, height), facecolor="black")
    vmin, vmax = vrange if vrange is not None else _display_range(bg)
    bg = _finite0(bg)
    for i, (mode, cuts) in enumerate(rows):
        y0 = (extra + row_height * (len(rows) - 1 - i)) / height
        ax = fig.add_axes((0.0, y0, 1.0, row_height / height))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            display = plotting.plot_anat(bg, display_mode=mode, cut_coords=list(cuts), figure=fig,
                                         axes=ax, annotate=True, draw_cross=False, black_bg=True,
                                         dim=0, vmin=vmin, vmax=vmax, colorbar=False)
            for layer in layers:
                layer(display)
    if legend:
        fig.legend(handles=list(legend), loc="lower left" if colorbar else "lower center",
                   ncol=min(len(legend), 6), frameon=False, labelcolor="white", fontsize=8,
                   bbox_to_anchor=(0.0, 0.0) if colorbar else (0.5, 0.0))
    if colorbar:
        cax = fig.add_axes((0.55, 0.55 * extra / height, 0.35, 0.3 * extra / height))
        sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(*colorbar["range"]),
                                          cmap=colorbar["cmap"])
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        cb.set_label(colorbar["label"], color="white", fontsize=8)
        cb.ax.tick_params(colors="white", labelsize=7)
        cb.outline.set_edgecolor("white")
    return fig


def _overlay(display, img, alpha: float, **kwargs) -> None:
    """``display.add_overlay`` with an opacity (``transparency`` since nilearn 0.12)."""
    try:
        display.add_overlay(img, transparency=alpha, **kwargs)
    except TypeError:
        display.add_overlay(img, alpha=alpha, **kwargs)


def _spread(lo: float, hi: float, n: int) -> list[float]:
    """``n`` cut coordinates spread inside [lo, hi], away from the edges."""
    if n == 1 or hi <= lo:
        return [0.5 * (lo + hi)]
    return [float(v) for v in np.linspace(lo + 0.15 * (hi - lo), hi - 0.15 * (hi - lo), n)]


def otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    return float(centers[np.nanargmax(np.where(w1 > 0, between, np.nan))])


def tissue_levels(img: nb.Nifti1Image) -> list[float]:
    """Two intensity levels that separate a T1w into dark / mid / bright classes
    (CSF, grey, white matter): Otsu's threshold, then Otsu's threshold above it.
    Their iso-contours are thin lines along tissue boundaries."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    vals = data[np.isfinite(data) & (data != 0)]
    if vals.size < 10 or vals.min() == vals.max():
        return []
    low = otsu(vals)
    upper = vals[vals > low]
    levels = [low]
    if upper.size >= 10 and upper.min() < upper.max():
        levels.append(otsu(upper))
    return levels


def _contour_layers(img: nb.Nifti1Image, colors: Sequence[str], what: str):
    """(layer, legend handles) drawing the tissue-boundary iso-contours of ``img``, one
    level per colour, after a light smoothing (display only) so lines do not trace noise."""
    from scipy.ndimage import gaussian_filter

    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    img = nb.Nifti1Image(gaussian_filter(data, 0.7), img.affine)
    levels = tissue_levels(img)[:len(colors)]
    names = ("CSF / tissue boundary", "grey / white boundary")
    legend = [Line2D([], [], color=c, label=f"{what} {n}") for c, n in zip(colors, names[:len(levels)])]

    def layer(d):
        for level, color in zip(levels, colors):
            d.add_contours(img, levels=[level], colors=[color], linewidths=0.8)

    return layer, legend


def _template_crop(path: Path) -> nb.Nifti1Image:
    """An image (the template T1w) cut to the brainstem box, loaded once per process
    unless the file changes."""
    st = Path(path).stat()
    return _template_crop_cached(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=2)
def _template_crop_cached(path: str, _mtime: int, _size: int) -> nb.Nifti1Image:
    return crop(load3d(Path(path)), BRAINSTEM_BOX, margin=2.0)


# --------------------------------------------------------------------------- figures
def slab_coverage(t1w: Path, nm_in_t1w: Path, out: Path) -> Path:
    """The NM slab outline (support of the NM image in T1w space) on the T1w, three planes."""
    t1 = load3d(t1w)
    nm = load3d(nm_in_t1w)
    slab = support(nm)
    bounds = world_bounds(slab, nm.affine)
    if bounds is None:
        raise ValueError(f"{Path(nm_in_t1w).name} is empty: no slab to outline")
    center = bounds.mean(1)
    slab_img = nb.Nifti1Image(slab.astype(np.uint8), nm.affine)

    def layer(d):
        _overlay(d, slab_img, 0.3, cmap=ListedColormap(["#ff3030"]))
        d.add_contours(slab_img, levels=[0.5], colors=["#ff3030"], linewidths=1.2)

    rows = [("ortho", tuple(center))]
    legend = [Patch(facecolor="#ff303040", edgecolor="#ff3030", label="NM slab (support of the NM image in T1w space)")]
    fig = _mosaic(t1, rows, [layer], width=9.0, row_height=3.2, legend=legend)
    return _save(fig, out)


def nm_to_t1w(t1w: Path, nm_in_t1w: Path, out: Path) -> Path:
    """T1w tissue boundaries over the NM image resampled in T1w space, zoomed on the slab."""
    nm = load3d(nm_in_t1w)
    slab = support(nm)
    bounds = world_bounds(slab, nm.affine)
    if bounds is None:
        raise ValueError(f"{Path(nm_in_t1w).name} is empty: nothing to compare")
    nm_c = crop(nm, bounds, margin=3.0)
    t1_c = resample_like(load3d(t1w), nm_c)
    center = bounds.mean(1)
    rows = [("z", _spread(bounds[2, 0], bounds[2, 1], 5)),
            ("y", [center[1] - 10, center[1], center[1] + 10]),
            ("x", [center[0] - 8, center[0], center[0] + 8])]
    layer, legend = _contour_layers(t1_c, ("#00e5ff",), "T1w")
    legend.append(Patch(facecolor="0.6", label="NM in T1w space (background)"))
    fig = _mosaic(nm_c, rows, [layer], vrange=_display_range(nm_c), legend=legend)
    return _save(fig, out)


def t1w_to_template(t1w_in_template: Path, template_t1w: Path | None, out: Path) -> Path:
    """Template tissue boundaries on the T1w warped to the template, zoomed on the brainstem.

    The boundaries are iso-intensity contours of the template T1w (see ``tissue_levels``);
    without a template, the warped T1w is shown alone.
    """
    t1 = crop(load3d(t1w_in_template), BRAINSTEM_BOX, margin=2.0)
    layers, legend = [], []
    if template_t1w is not None:
        tpl = resample_like(_template_crop(template_t1w), t1)
        layer, legend = _contour_layers(tpl, ("#ff3030", "#00e5ff"), "template")
        layers.append(layer)
    fig = _mosaic(t1, BRAINSTEM_CUTS, layers, legend=legend)
    return _save(fig, out)


def flicker_before(out: Path) -> Path:
    """Where ``t1w_template_flicker`` writes the template's frame beside ``out``."""
    return out.with_name(out.name.replace(".svg", "_before.svg"))


def t1w_template_flicker(t1w_in_template: Path, template_t1w: Path, out: Path) -> Path:
    """Two frames on one layout for the report's before/after flicker: the template T1w
    (``flicker_before(out)``) and the T1w warped to it (``out``), same cuts, same box.

    Each frame is scaled to its own intensity range (the two T1ws have different units);
    what should not move between the frames is the anatomy: brainstem, fourth ventricle,
    cerebellar outline.
    """
    t1 = crop(load3d(t1w_in_template), BRAINSTEM_BOX, margin=2.0)
    tpl = resample_like(_template_crop(template_t1w), t1)
    _save(_mosaic(tpl, BRAINSTEM_CUTS), flicker_before(out))
    return _save(_mosaic(t1, BRAINSTEM_CUTS), out)


def labels_on(img: nb.Nifti1Image, dseg_path: Path) -> nb.Nifti1Image:
    """The label image as int32 on the grid of ``img`` (nearest-neighbour only when the
    grids differ; the pipeline writes them on the same grid)."""
    dseg = nb.load(str(dseg_path))
    out = nb.Nifti1Image(np.asarray(dseg.dataobj).astype(np.int32), dseg.affine)
    if out.shape[:3] != img.shape[:3] or not np.allclose(out.affine, img.affine, atol=1e-3):
        out = resample_like(out, img, nearest=True)
    return out


def _canonical(img: nb.Nifti1Image) -> nb.Nifti1Image:
    return nb.as_closest_canonical(img)


def rois_native(nm_path: Path, dseg_path: Path, labels: dict[int, Label], out: Path,
                max_slices: int = 6) -> Path:
    """ROI and reference-region outlines on the NM image in its native (acquired) slices.

    The image is shown as acquired: axes are only flipped/permuted to the closest RAS
    orientation (no resampling), slices along the axis closest to inferior-superior,
    zoomed on the labelled voxels (midbrain and pons). Top row without, bottom row
    with the outlines, so the bright nuclei can be compared with where the atlas put them.
    """
    native = load3d(nm_path)
    nm = _canonical(native)
    dseg = np.asarray(_canonical(labels_on(native, dseg_path)).dataobj).astype(np.int32)
    data = np.nan_to_num(np.asarray(nm.dataobj, dtype=np.float32))
    zooms = nm.header.get_zooms()[:3]

    present = [int(v) for v in np.unique(dseg) if v != 0]
    if present:
        idx = np.argwhere(dseg > 0)
        lo, hi = idx.min(0), idx.max(0)
        margin = np.ceil(np.array([12.0, 12.0, 0.0]) / np.array(zooms)).astype(int)
        lo = np.maximum(lo - margin, 0)
        hi = np.minimum(hi + margin, np.array(data.shape) - 1)
        zs = [k for k in range(lo[2], hi[2] + 1) if (dseg[..., k] > 0).any()]
    else:
        lo, hi = np.zeros(3, int), np.array(data.shape) - 1
        zs = list(range(data.shape[2]))
    if len(zs) > max_slices:
        zs = [zs[int(round(i))] for i in np.linspace(0, len(zs) - 1, max_slices)]
    sub = data[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1]
    vmin, vmax = np.percentile(sub[sub != 0], [1.0, 99.5]) if (sub != 0).any() else (0.0, 1.0)

    ncol = len(zs)
    fig, axes = plt.subplots(2, ncol, figsize=(min(1.9 * ncol + 0.4, 11.0), 4.6),
                             facecolor="black", squeeze=False)
    aspect = zooms[1] / zooms[0]
    for j, k in enumerate(zs):
        sl = data[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, k].T
        lab = dseg[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, k].T
        z_mm = nb.affines.apply_affine(nm.affine, [0, 0, k])[2]
        for i in range(2):
            ax = axes[i, j]
            ax.imshow(sl, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, aspect=aspect,
                      interpolation="nearest")
            ax.set_axis_off()
            if i == 1:
                for value in np.unique(lab):
                    if value == 0:
                        continue
                    lbl = labels.get(int(value))
                    color = roi_color(lbl.roi if lbl else str(value))
                    style = "--" if lbl and lbl.kind == "reference" else "-"
                    ax.contour((lab == value).astype(float), levels=[0.5], colors=[color],
                               linewidths=0.9, linestyles=style)
            else:
                ax.set_title(f"slice {k} (z≈{z_mm:.0f} mm)", color="white", fontsize=8)
        axes[0, j].text(0.02, 0.02, "L", color="white", fontsize=7, transform=axes[0, j].transAxes)
        axes[0, j].text(0.98, 0.02, "R", color="white", fontsize=7, ha="right",
                        transform=axes[0, j].transAxes)
    handles, seen = [], set()
    for value in present:
        lbl = labels.get(value) or Label(value, f"label {value}", f"label {value}", NA, NA)
        if lbl.roi in seen:
            continue
        seen.add(lbl.roi)
        handles.append(Line2D([], [], color=roi_color(lbl.roi), linestyle="--" if lbl.kind == "reference" else "-",
                              label=f"{lbl.roi} ({lbl.kind})" if lbl.kind != NA else lbl.roi))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False,
                   labelcolor="white", fontsize=8)
    else:
        fig.text(0.5, 0.02, "no ROI label inside the NM field of view", color="#ffb000",
                 ha="center", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.1, wspace=0.03, hspace=0.03)
    return _save(fig, out)


def template_map(bg_path: Path, map_path: Path, out: Path, label: str, cmap: str = "inferno",
                 vrange: tuple[float, float] | None = None, name: str = "map") -> Path:
    """A voxelwise map in template space (n/a outside the slab) over the template T1w,
    zoomed on the brainstem, with the slab outline. ``name`` says what the map is in the note
    raised (``FigureUnavailable``) when it holds nothing inside the brainstem."""
    bg = _template_crop(bg_path)
    mp = resample_like(_finite0(load3d(map_path)), bg, nearest=True)  # n/a (outside) -> 0
    bounds = world_bounds(np.asarray(mp.dataobj) != 0, mp.affine)
    if bounds is None:
        raise FigureUnavailable(f"no {name} inside the brainstem: the slab misses it "
                                f"({Path(map_path).name} holds no value inside the brainstem box)")
    rows = [("z", _spread(bounds[2, 0], bounds[2, 1], 5)), BRAINSTEM_CUTS[2]]
    return _map_figure(bg, mp, rows, out, label, cmap, vrange)


def native_map(bg_path: Path | None, map_path: Path, out: Path, label: str,
               cmap: str = "viridis") -> Path:
    """A map not in template space (e.g. an MTR map beside the NM image), three planes."""
    mp = load3d(map_path)
    bounds = world_bounds(np.isfinite(np.asarray(mp.dataobj)) & (np.asarray(mp.dataobj) != 0), mp.affine)
    if bounds is None:
        raise ValueError(f"{Path(map_path).name} holds no finite non-zero value")
    bg = crop(load3d(bg_path), bounds, margin=5.0) if bg_path is not None else mp
    mp = resample_like(_finite0(mp), bg, nearest=True)
    return _map_figure(bg, mp, [("ortho", tuple(bounds.mean(1)))], out, label, cmap, None)


def _map_figure(bg, mp, rows, out, label, cmap, vrange):
    data = np.asarray(mp.dataobj, dtype=np.float32)
    inside = np.isfinite(data) & (data != 0)
    if vrange is None:
        vals = data[inside]
        vrange = tuple(np.percentile(vals, [2, 98])) if vals.size else (0.0, 1.0)
        if vrange[1] <= vrange[0]:
            vrange = (vrange[0], vrange[0] + 1.0)
    shown = nb.Nifti1Image(np.where(inside, data, 0.0).astype(np.float32), mp.affine)
    slab = nb.Nifti1Image(inside.astype(np.uint8), mp.affine)

    def layer(d):
        # threshold=1e-6 (nilearn's default) hides zeros, i.e. everything outside the slab
        _overlay(d, shown, 0.85, cmap=cmap, vmin=vrange[0], vmax=vrange[1])
        if inside.any():
            d.add_contours(slab, levels=[0.5], colors=["white"], linewidths=0.6)

    legend = [Line2D([], [], color="white", label="slab outline (where the map is defined)")]
    fig = _mosaic(bg, rows, [layer], legend=legend,
                  colorbar={"range": vrange, "cmap": cmap, "label": label})
    return _save(fig, out)


def reference_histogram(nm_path: Path, dseg_path: Path, labels: dict[int, Label],
                        ref_rows: Sequence[dict[str, str]], targets: dict[str, list[str]],
                        out: Path) -> Path:
    """Histogram of NM intensities in each reference region (native space) with the
    reference value marked *as written* in the measures table.

    ``ref_rows`` are the measures rows with ``measure == "reference_value"`` for this
    source; ``targets`` maps a reference ROI to the target ROIs measured against it
    (outlined for comparison).
    """
    native = load3d(nm_path)
    nm = np.asarray(native.dataobj, dtype=np.float32)
    dseg = np.asarray(labels_on(native, dseg_path).dataobj).astype(np.int32)

    def voxels(roi: str) -> np.ndarray:
        idx = [i for i, lbl in labels.items() if lbl.roi == roi]
        vals = nm[np.isin(dseg, idx)]
        return vals[np.isfinite(vals)]

    refs = sorted({lbl.roi for lbl in labels.values() if lbl.kind == "reference"})
    for row in ref_rows:
        name = _ref_region(row)
        if name not in refs:
            refs.append(name)
    if not refs:
        raise ValueError("no reference region in the label table or the measures table")
    fig, axes = plt.subplots(1, len(refs), figsize=(4.6 * len(refs), 3.0), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, ref in zip(axes[0], refs):
        vals = voxels(ref)
        if vals.size:
            ax.hist(vals, bins=min(60, max(10, vals.size // 10)), color=roi_color(ref), alpha=0.6,
                    label=f"{ref} voxels (n={vals.size})")
        else:
            ax.text(0.5, 0.6, f"no {ref} voxel in the NM image", ha="center", transform=ax.transAxes)
        for tgt in targets.get(ref, []):
            tv = voxels(tgt)
            if tv.size:
                ax.hist(tv, bins=min(60, max(10, tv.size // 5)), histtype="step", color=roi_color(tgt),
                        linewidth=1.2, label=f"{tgt} voxels (n={tv.size})")
        marked = [r for r in ref_rows if _ref_region(r) == ref]
        for i, row in enumerate(marked):
            value = as_float(row.get("value"))
            text = (f"reference_value = {row.get('value', NA)} ({row.get('ref_stat', NA)}, "
                    f"{row.get('roi', NA)} {row.get('hemi', NA)})")
            if value is None:
                ax.plot([], [], " ", label=text + ": not drawn")
                continue
            ax.axvline(value, color="black", linestyle=styles[i % len(styles)], linewidth=1.4, label=text)
        if not marked:
            ax.plot([], [], " ", label="no reference_value row in the measures table")
        ax.set_title(f"reference region {ref}")
        ax.set_xlabel("NM intensity (a.u., native space)")
        ax.set_ylabel("voxels")
        ax.legend(fontsize=7, loc="upper right", frameon=False)
    fig.tight_layout()
    return _save(fig, out)


def _ref_region(row: dict[str, str]) -> str:
    ref = row.get("reference", NA)
    return ref if ref and ref != NA else row.get("roi", NA)


def lc_profile(rows: Sequence[dict[str, str]], profile_tsv: Path | None, out: Path) -> Path:
    """LC contrast along its rostro-caudal axis: the ``max_per_slice`` rows of the measures
    table (rostral, middle, caudal), and the per-slice profile file when there is one."""
    panels = 1 + (profile_tsv is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.0), squeeze=False)
    ax = axes[0, 0]
    rois = [r for r in LC_ORDER if any(row.get("roi") == r for row in rows)]
    rois += sorted({row.get("roi", NA) for row in rows} - set(rois))
    by_hemi: dict[str, dict[str, float]] = {}
    for row in rows:
        v = as_float(row.get("value"))
        if v is not None:
            by_hemi.setdefault(row.get("hemi", NA), {})[row.get("roi", NA)] = v
    for hemi, vals in sorted(by_hemi.items()):  # n/a is a gap, not interpolated over
        ax.plot(range(len(rois)), [vals.get(r, np.nan) for r in rois], marker="o", label=f"hemi {hemi}")
    ax.set_xticks(range(len(rois)), [r.replace("LC_", "") for r in rois])
    ax.set_xlabel("LC part (rostral → caudal)")
    ax.set_ylabel("CR, max per slice (as written)")
    ax.set_title("LC profile from the measures table")
    if by_hemi:
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no numeric value (all n/a)", ha="center", transform=ax.transAxes)
    if profile_tsv is not None:
        _plot_tsv(axes[0, 1], profile_tsv, x_names=("slice", "slice_index", "z", "z_mm"))
        axes[0, 1].set_title(Path(profile_tsv).name, fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def _plot_tsv(ax, path: Path, x_names: Sequence[str] = (), hline: float | None = None,
              hline_label: str = "") -> None:
    """Plot every numeric column of a TSV (``n/a`` as gaps) against a slice/row index."""
    table = read_tsv(path)
    cols = {h: [as_float(r[i]) for r in table.rows] for i, h in enumerate(table.header)}
    xcol = next((h for h in table.header if h in x_names), None)
    x = [v if v is not None else np.nan for v in cols.pop(xcol)] if xcol else list(range(len(table.rows)))
    plotted = 0
    for name, vals in cols.items():
        if any(v is not None for v in vals):
            ax.plot(x, [v if v is not None else np.nan for v in vals], marker=".", label=name)
            plotted += 1
    if hline is not None:
        ax.axhline(hline, color="red", linestyle="--", linewidth=1, label=hline_label)
    ax.set_xlabel(xcol or "row")
    if plotted or hline is not None:
        ax.legend(fontsize=7, frameon=False)
    if not plotted:
        ax.text(0.5, 0.5, "no numeric column", ha="center", transform=ax.transAxes)


def motion(tsv: Path, out: Path, threshold_mm: float) -> Path:
    """Per-repeat motion as written in ``*_desc-motion_timeseries.tsv``."""
    fig, ax = plt.subplots(figsize=(6.0, 2.8))
    mm_like = any("mm" in h or "displacement" in h for h in read_tsv(tsv).header)
    _plot_tsv(ax, tsv, x_names=("repeat", "volume", "index"),
              hline=threshold_mm if mm_like else None,
              hline_label=f"warning threshold ({threshold_mm} mm, motion_max_mm)")
    ax.set_title("motion between repeats (relative to the first)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, out)
