"""Thin nipype interfaces around the ANTsPy registration and the measures.

Each interface reads files, calls plain functions (``registration``, ``roi_measures``) and writes
files in its own node folder; nipype caches them, so a re-run with the same work directory
resumes where it stopped.
"""
from __future__ import annotations

import json
import os

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface,
                                    TraitedSpec, isdefined, traits)

from ..acquisitions import REF_STATS


def _ants():
    import ants  # imported in the worker: nipype may run nodes in other processes

    return ants


def _write(img, path: str, **facts) -> str:
    """Write an ANTs image, then give it the header of a derivative (``images.derivative_image``:
    ``space`` for template space, ``source`` for the native image whose xform codes it keeps,
    ``labels`` for a dseg)."""
    from ..images import save_ants_image

    save_ants_image(img, path, **facts)
    return path


class _N4InputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True)


class _N4OutputSpec(TraitedSpec):
    t1w_preproc = File(exists=True)


class BiasCorrectT1w(SimpleInterface):
    """N4 bias-field correction of the T1w (its own node, so that the NM → T1w registration
    need not wait for the T1w → template registration)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        from ..registration import n4, shrink_for

        out = os.path.join(runtime.cwd, "t1w_preproc.nii.gz")
        t1w = ants.image_read(self.inputs.t1w, dimension=3)
        # the field is fitted on a grid of about 8 mm (shrink 8 for a 1 mm T1w): on two phantom
        # heads it matched shrink 4 within 1 % (1st-99th percentile in the head) for a quarter
        # of the CPU; the T1w only serves the registrations, the NM has its own N4. When the
        # shrink is even, every other voxel is taken first and the field interpolated back
        # (``block``): N4 sees the same voxels, so the same field, in half the time. An odd
        # shrink keeps plain N4: another grid gives another field, and the T1w -> template
        # registration of a head pitched by 45 degrees failed with one (tests/test_faults.py).
        shrink = shrink_for(t1w, 8.0)
        if shrink % 2 == 0:
            _write(n4(t1w, shrink=shrink // 2, block=2), out, source=self.inputs.t1w)
        else:
            _write(n4(t1w, shrink=shrink), out, source=self.inputs.t1w)
        self._results["t1w_preproc"] = out
        return runtime


class _AnatInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="the bias-corrected T1w")
    template = traits.Str(mandatory=True, desc="space label of the template")
    quality = traits.Enum("default", "fast", usedefault=True)
    random_seed = traits.Int(desc="sampling seed of the registrations (--random-seed); unset: registration.SEED")


class _AnatOutputSpec(TraitedSpec):
    t1w_preproc = File(exists=True, desc="the input T1w, passed through for the orchestrator")
    affine = File(exists=True)
    warp = File(exists=True)
    invwarp = File(exists=True)
    similarity = traits.Float()


class AnatToTemplate(SimpleInterface):
    """Register the bias-corrected T1w to the template (brainstem-focused SyN)."""

    input_spec = _AnatInputSpec
    output_spec = _AnatOutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        from ..registration import set_seed, t1w_to_template
        from ..templates import get_template

        set_seed(self.inputs.random_seed if isdefined(self.inputs.random_seed) else None)

        tpl = get_template(self.inputs.template)
        t1 = ants.image_read(self.inputs.t1w, dimension=3)
        template = ants.image_read(str(tpl.t1w))
        mask = ants.image_read(str(tpl.brain_mask))
        mask = ants.threshold_image(mask, 0.5 if mask.max() <= 1 else 1, float(mask.max()) + 1)
        res = t1w_to_template(t1, template, mask, os.path.join(runtime.cwd, "t1w2tpl_"),
                              quality=self.inputs.quality)
        self._results.update(t1w_preproc=self.inputs.t1w, affine=res["affine"], warp=res["warp"],
                             invwarp=res["invwarp"], similarity=res["similarity"])
        return runtime


class _WarpInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="the bias-corrected T1w")
    template = traits.Str(mandatory=True, desc="space label of the template")
    affine = File(exists=True, mandatory=True)
    warp = File(exists=True, mandatory=True)


class _WarpOutputSpec(TraitedSpec):
    t1w_template = File(exists=True)


class WarpT1wToTemplate(SimpleInterface):
    """The T1w resampled into template space (a derivative only: no measure depends on it,
    so it is made beside the NM measures rather than before them)."""

    input_spec = _WarpInputSpec
    output_spec = _WarpOutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        from ..registration import warp_to_template
        from ..templates import get_template

        template = ants.image_read(str(get_template(self.inputs.template).t1w))
        t1 = ants.image_read(self.inputs.t1w, dimension=3)
        out = os.path.join(runtime.cwd, "t1w_template.nii.gz")
        _write(warp_to_template(t1, template, {"affine": self.inputs.affine, "warp": self.inputs.warp}), out,
               space=self.inputs.template)
        self._results["t1w_template"] = out
        return runtime


class _PrepareInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="runs, or one 4D file")
    mt_off = File(exists=True, desc="the mt-off partner of an MT pair")
    random_seed = traits.Int(desc="sampling seed of the registrations (--random-seed); unset: registration.SEED")


class _PrepareOutputSpec(TraitedSpec):
    nm_preproc = File(exists=True)
    mt_off_preproc = File(desc="mt-off realigned to the (averaged) mt-on")
    motion = traits.List(traits.Float(), desc="per repeat, mm, relative to the first")


class PrepareNM(SimpleInterface):
    """Realign and average the repeats, then N4-correct; for MT pairs also realign the off image."""

    input_spec = _PrepareInputSpec
    output_spec = _PrepareOutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        from ..acquisitions import NM_N4_SPLINE_MM
        from ..registration import n4_field, realign_repeats, resample_repeat, rigid, set_seed, slices_last

        set_seed(self.inputs.random_seed if isdefined(self.inputs.random_seed) else None)

        repeats = []
        for f in self.inputs.in_files:
            img = ants.image_read(f)
            repeats += ants.ndimage_to_list(img) if img.dimension == 4 else [img]
        # every measure takes the slices along the third voxel axis: put them there, whatever
        # order the file stores its axes in (the MT-off image is resampled onto this grid)
        repeats = [slices_last(r) for r in repeats]
        prefix = os.path.join(runtime.cwd, "rep_")
        mean, motion = realign_repeats(repeats, prefix) if len(repeats) > 1 else (repeats[0], [0.0])
        # One bias field for both images of an MT pair: estimated on the (averaged) on
        # image and divided out of both, so the ratio carries no bias of its own.
        field = np.maximum(n4_field(mean, spline_mm=NM_N4_SPLINE_MM).numpy(), 1e-6)
        nm = mean.new_image_like((mean.numpy() / field).astype(np.float32))
        out = os.path.join(runtime.cwd, "nm_preproc.nii.gz")
        _write(nm, out, source=self.inputs.in_files[0])
        self._results.update(nm_preproc=out, motion=motion)
        if isdefined(self.inputs.mt_off):
            off = ants.image_read(self.inputs.mt_off)
            if off.dimension == 4:
                off = ants.ndimage_to_list(off)[0]
            reg = rigid(mean, off, os.path.join(runtime.cwd, "off_"))
            off_r = resample_repeat(mean, off, reg["fwdtransforms"])
            off_c = off_r.new_image_like((off_r.numpy() / field).astype(np.float32))
            off_path = os.path.join(runtime.cwd, "mt_off_preproc.nii.gz")
            off_c.to_file(off_path)
            self._results["mt_off_preproc"] = off_path
        return runtime


class _CoregInputSpec(BaseInterfaceInputSpec):
    nm = File(exists=True, mandatory=True)
    t1w = File(exists=True, mandatory=True)
    random_seed = traits.Int(desc="sampling seed of the registrations (--random-seed); unset: registration.SEED")


class _CoregOutputSpec(TraitedSpec):
    rigid = File(exists=True, desc="ANTs rigid mapping NM points to T1w points")
    nm_t1w = File(exists=True)
    similarity = traits.Float()


class CoregNM(SimpleInterface):
    """Rigid NM ↔ T1w from the scanner headers, metric restricted to the slab."""

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        from ..registration import nm_to_t1w, push_nm_to_t1w, set_seed

        set_seed(self.inputs.random_seed if isdefined(self.inputs.random_seed) else None)

        nm, t1 = ants.image_read(self.inputs.nm), ants.image_read(self.inputs.t1w)
        res = nm_to_t1w(nm, t1, os.path.join(runtime.cwd, "nm2t1w_"))
        out = os.path.join(runtime.cwd, "nm_t1w.nii.gz")
        _write(push_nm_to_t1w(nm, t1, res["rigid"]), out, source=self.inputs.t1w)  # on the T1w grid
        self._results.update(rigid=res["rigid"], nm_t1w=out, similarity=res["similarity"])
        return runtime


class _QuantInputSpec(BaseInterfaceInputSpec):
    nm = File(exists=True, mandatory=True)
    mt_off = File(exists=True, desc="realigned mt-off (MTR pairs)")
    rigid = File(exists=True, mandatory=True)
    affine = File(exists=True, mandatory=True)
    warp = File(exists=True, mandatory=True)
    invwarp = File(exists=True, mandatory=True)
    atlas = File(exists=True, mandatory=True)
    atlas_table = File(exists=True, mandatory=True)
    template = traits.Str(mandatory=True)
    acq_type = traits.Str(mandatory=True)
    ref_stat = traits.Enum(*REF_STATS, mandatory=True)
    profile = traits.Str(desc="the acquisition profile as text: part of nipype's cache key, so that "
                              "a changed profile re-runs the measures instead of reusing old ones")


class _QuantOutputSpec(TraitedSpec):
    dseg = File(exists=True)
    crmap = File(exists=True)
    nm_template = File(exists=True)
    mtr_native = File()
    mtr_template = File()
    mte_native = File(desc="MT enhancement on/off, NM grid")
    mte_template = File()
    results = File(exists=True, desc="JSON: measure rows, reference values, coverage")


class QuantifyNM(SimpleInterface):
    """Pull the atlas into NM space, measure, and push the CR map to the template."""

    input_spec = _QuantInputSpec
    output_spec = _QuantOutputSpec

    def _run_interface(self, runtime):
        ants = _ants()
        import pandas as pd

        from .. import measures
        from ..acquisitions import PROFILES
        from ..roi_measures import Grid, measure_rois, mt_rows, qc_snr, region_masks, tissue_only
        from ..contract.thresholds import AXIAL_TILT_MAX_DEG
        from ..registration import inferior_first, pull_atlas_to_nm, push_nm_to_template, slice_tilt_deg
        from ..templates import get_template

        xfm = {"affine": self.inputs.affine, "warp": self.inputs.warp, "invwarp": self.inputs.invwarp}
        profile = PROFILES[self.inputs.acq_type]
        nm = ants.image_read(self.inputs.nm)
        tilt = slice_tilt_deg(nm)
        profile = profile.for_slices(axial=tilt <= AXIAL_TILT_MAX_DEG)
        atlas = ants.image_read(self.inputs.atlas)
        template = ants.image_read(str(get_template(self.inputs.template).t1w))
        table = pd.read_csv(self.inputs.atlas_table, sep="\t")
        cwd = runtime.cwd

        dseg = pull_atlas_to_nm(atlas, nm, xfm, self.inputs.rigid)
        dseg_path = os.path.join(cwd, "dseg.nii.gz")
        _write(dseg, dseg_path, source=self.inputs.nm, labels=True)
        labels = dseg.numpy().astype(int)

        # Coverage: the slab's support pushed to the template, against each template ROI.
        ones = ants.from_numpy(np.ones(nm.shape, np.float32), origin=nm.origin, spacing=nm.spacing,
                               direction=nm.direction)
        slab_frac = np.nan_to_num(push_nm_to_template(ones, template, xfm, self.inputs.rigid).numpy())
        slab_tpl = slab_frac > 0.5
        atlas_arr = atlas.numpy().astype(int)
        box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(atlas_arr))  # the ROIs' bounding box
        tpl_masks = region_masks(atlas_arr[box], table)
        coverage = {k: measures.coverage(v, slab_tpl[box]) for k, v in tpl_masks.items()}

        image = nm.numpy()
        mtr_arr = None
        measured = image  # what the ROI measures see
        if isdefined(self.inputs.mt_off):
            off = ants.image_read(self.inputs.mt_off).numpy()
            mtr_arr, enh_arr = measures.mtr(image, off), measures.mt_enhancement(image, off)
            measured = tissue_only(image, mtr_arr, labels, table, profile)
        nm_tpl = np.nan_to_num(push_nm_to_template(nm, template, xfm, self.inputs.rigid).numpy())
        native = Grid(measured, labels, float(np.prod(nm.spacing)), inferior_first(nm))
        in_template = Grid(np.where(slab_tpl, nm_tpl, np.nan)[box], atlas_arr[box],
                           float(np.prod(template.spacing)), inferior_first(template))
        rows, refs = measure_rois(native, in_template, table, coverage, profile, self.inputs.ref_stat)
        if mtr_arr is not None:
            rows += mt_rows(mtr_arr, enh_arr, image, off, labels, table, coverage, profile, refs,
                            native.voxel_volume)

        ref = refs.get(profile.map_reference, {}).get("value", np.nan)
        # The CR map in template space without a third resampling: linear interpolation is
        # linear in the values, so push((I - ref) / ref) = (push(I) - ref * push(1)) / ref.
        if np.isfinite(ref) and ref > 0:
            cr_arr = ((nm_tpl - ref * slab_frac) / ref).astype(np.float32)
        else:
            cr_arr = np.full(nm_tpl.shape, np.nan, np.float32)
        cr_arr[~slab_tpl] = np.nan
        out = {k: os.path.join(cwd, f"{k}.nii.gz") for k in ("crmap", "nm_template")}
        space = self.inputs.template
        _write(ants.from_numpy(cr_arr, origin=template.origin, spacing=template.spacing,
                               direction=template.direction), out["crmap"], space=space)
        nm_tpl[~slab_tpl] = 0
        _write(ants.from_numpy(nm_tpl, origin=template.origin, spacing=template.spacing,
                               direction=template.direction), out["nm_template"], space=space)
        if mtr_arr is not None:
            for name, arr in (("mtr", mtr_arr), ("mte", enh_arr)):
                img = ants.from_numpy(np.nan_to_num(arr).astype(np.float32), origin=nm.origin,
                                      spacing=nm.spacing, direction=nm.direction)
                out[f"{name}_native"] = os.path.join(cwd, f"{name}_native.nii.gz")
                _write(img, out[f"{name}_native"], source=self.inputs.nm)
                tpl = push_nm_to_template(img, template, xfm, self.inputs.rigid).numpy()
                tpl[~slab_tpl] = np.nan
                out[f"{name}_template"] = os.path.join(cwd, f"{name}_template.nii.gz")
                _write(ants.from_numpy(tpl, origin=template.origin, spacing=template.spacing,
                                       direction=template.direction), out[f"{name}_template"], space=space)

        results = {
            "rows": rows,
            "references": {k: {kk: vv for kk, vv in v.items() if kk != "values"} for k, v in refs.items()},
            "coverage": {f"{roi}_{hemi}": cov for (roi, hemi), cov in coverage.items()},
            "snr": qc_snr(refs, profile.map_reference),
            "neighbour_distance": next((r["neighbour_distance"] for r in refs.values()), None),
            "slice_tilt_deg": tilt,
            "map_reference": profile.map_reference,
        }
        out["results"] = os.path.join(cwd, "results.json")
        with open(out["results"], "w") as fh:
            json.dump(results, fh, default=lambda x: None if x != x else float(x))
        self._results.update(dseg=dseg_path, **out)
        return runtime
