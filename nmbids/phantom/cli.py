"""The command line: ``nmbids-simulate OUT --n N --seed S [options]`` (``main``).

Parses the options into the keywords of ``simulate_dataset``; wrong arguments give a one-line
error and exit code 2, with nothing written.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nibabel as nb

from .acquisition import NM_ORIENTATIONS
from .dataset import simulate_dataset
from .options import Options
from .writer import GENERATOR, REPEATS_LAYOUTS


def _parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog=GENERATOR,
        description="Write a synthetic NM-MRI BIDS dataset (OUT/bids) with its truth (OUT/truth.json).")
    p.add_argument("out", type=Path, help="output folder (bids/, truth/ and truth.json go inside)")
    p.add_argument("--n", type=int, default=2, help="number of subjects (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/bids and truth")
    p.add_argument("--acq", default="gremt", help="comma list of gremt, fse, mtr (default gremt)")
    p.add_argument("--nuclei", default="builtin",
                   help="builtin, or a label image (e.g. AAL3 dseg .nii.gz) read in template mm")
    p.add_argument("--nuclei-labels", default=None,
                   help="label numbers for --nuclei PATH, e.g. SN_L=161,SN_R=162,VTA_L=159,"
                        "VTA_R=160,LC_L=167,LC_R=168 (default: read the sibling *_dseg.tsv)")
    p.add_argument("--template", default=None, help="template space label (default: best offline)")
    p.add_argument("--t1w-res", type=float, default=d.t1w_res, help="T1w voxel size, mm (1.0)")
    p.add_argument("--t1w-snr", type=float, default=d.t1w_snr, help="T1w SNR in WM (40)")
    p.add_argument("--nm-inplane", type=float, default=d.nm_inplane, help="NM in-plane voxel, mm (0.8)")
    p.add_argument("--nm-slice", type=float, default=d.nm_slice,
                   help="GRE-MT/MTR slice thickness, mm (2.0)")
    p.add_argument("--nm-slices", type=int, default=d.nm_slices, help="GRE-MT/MTR slices (20)")
    p.add_argument("--nm-fov", default="180x200", help="NM in-plane field of view LRxAP, mm (180x200)")
    p.add_argument("--fse-slice", type=float, default=d.fse_slice, help="FSE slice thickness, mm (2.5)")
    p.add_argument("--fse-slices", type=int, default=d.fse_slices, help="FSE slices (14)")
    p.add_argument("--snr", type=float, default=d.snr, help="NM SNR in WM per repeat (25)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="NM repeats (3)")
    p.add_argument("--repeats-layout", choices=REPEATS_LAYOUTS, default="auto",
                   help="repeats as one 4D file (4d), as run- files (runs), or auto: runs for "
                        "_T1w names (BIDS requires them 3D), 4D otherwise (default auto)")
    p.add_argument("--repeats-as-runs", action="store_true", help="same as --repeats-layout runs")
    p.add_argument("--max-tilt", type=float, default=d.max_tilt, help="max slab tilt, deg (15)")
    p.add_argument("--nm-orientation", choices=NM_ORIENTATIONS, default=d.nm_orientation,
                   help="plane of the NM slices: axial (default), coronal or sagittal (--nm-fov then "
                        "spans the slices' plane)")
    p.add_argument("--motion-mm", type=float, default=d.motion_mm, help="max motion translation (1)")
    p.add_argument("--motion-deg", type=float, default=d.motion_deg, help="max motion rotation (1)")
    p.add_argument("--deform-mm", type=float, default=d.deform_mm, help="max deformation, mm (3)")
    p.add_argument("--bias", type=float, default=d.bias, help="bias field strength (0.15; 0 = none)")
    p.add_argument("--noise-free", action="store_true", help="no noise and no bias field")
    p.add_argument("--nm-zero-fill", type=int, default=d.nm_zero_fill,
                   help="NM noise zero-filled from a grid this many times coarser in plane, as a scanner's "
                        "interpolated reconstruction makes it (1: independent noise; default 1)")
    p.add_argument("--nm-slice-zero-fill", type=int, default=d.nm_slice_zero_fill,
                   help="the same through the slices, as a 3D slab reconstructed with interpolated "
                        "slices (1: independent noise; default 1)")
    p.add_argument("--naming-variants", action="store_true",
                   help="spread NM file names seen in the wild across subjects")
    p.add_argument("--sessions", type=int, default=d.sessions, help="sessions per subject (1)")
    p.add_argument("--groups", default="control", help="comma list of groups (control)")
    p.add_argument("--effect", action="append", default=[], metavar="[GROUP:]ROI:MEASURE:VALUE",
                   help="group effect, e.g. SN:cr:0.03 (repeatable; default group: all but the first)")
    p.add_argument("--sites", type=int, default=d.sites, help="number of sites (1)")
    p.add_argument("--site-cr-spread", type=float, default=d.site_cr_spread,
                   help="site CR scale drawn in 1 +- this (0.15)")
    p.add_argument("--cr-sd", type=float, default=None, metavar="SD",
                   help="base CR = middle of its range + N(0, SD) instead of uniform over the range")
    p.add_argument("--age-range", default="20,70", help="LOW,HIGH years (20,70)")
    p.add_argument("--age-slope", action="append", default=None, metavar="[ROI:]VALUE",
                   help="CR change per year (default SN:0.001 VTA:0.001 LC:0)")
    p.add_argument("--sex-effect", type=float, default=d.sex_effect, help="CR added for males (0)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        fov = tuple(float(x) for x in re.split(r"[x,]", args.nm_fov))
        age = tuple(float(x) for x in args.age_range.split(","))
        if len(fov) != 2 or len(age) != 2:
            raise ValueError("--nm-fov needs LRxAP and --age-range LOW,HIGH")
        options = dict(
            acq=tuple(a.strip().lower() for a in args.acq.split(",") if a.strip()),
            nuclei=args.nuclei, nuclei_labels=args.nuclei_labels, template=args.template,
            t1w_res=args.t1w_res, t1w_snr=args.t1w_snr, nm_inplane=args.nm_inplane,
            nm_slice=args.nm_slice, nm_slices=args.nm_slices, nm_fov=fov,
            fse_slice=args.fse_slice, fse_slices=args.fse_slices, snr=args.snr,
            repeats=args.repeats,
            repeats_layout="runs" if args.repeats_as_runs else args.repeats_layout,
            max_tilt=args.max_tilt, nm_orientation=args.nm_orientation,
            motion_mm=args.motion_mm, motion_deg=args.motion_deg, deform_mm=args.deform_mm,
            bias=args.bias, noise_free=args.noise_free, nm_zero_fill=args.nm_zero_fill,
            nm_slice_zero_fill=args.nm_slice_zero_fill,
            naming_variants=args.naming_variants,
            sessions=args.sessions,
            groups=tuple(g.strip() for g in args.groups.split(",") if g.strip()),
            effects=tuple(args.effect), sites=args.sites, site_cr_spread=args.site_cr_spread, cr_sd=args.cr_sd,
            age_range=age, sex_effect=args.sex_effect)
        if args.age_slope is not None:
            options["age_slope"] = tuple(args.age_slope)
        if args.nuclei != "builtin":
            options["nuclei"] = str(Path(args.nuclei).resolve())
        simulate_dataset(args.out, n_subjects=args.n, seed=args.seed, overwrite=args.overwrite,
                         verbose=args.verbose, **options)
    except (ValueError, FileExistsError, FileNotFoundError, LookupError,
            nb.filebasedimages.ImageFileError) as exc:
        print(f"{GENERATOR}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'bids'} and {args.out / 'truth.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
