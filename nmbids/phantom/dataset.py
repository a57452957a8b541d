"""Making a dataset: ``simulate_dataset`` loops over subjects, sessions and acquisitions.

Each step draws from its own random stream, keyed by the seed and its place in the loop, so
that the same arguments and seed give byte-identical files (and a cohort simulated again at
another SNR differs only by its noise):

* ``[seed, 7, 0]``: the sites' CR and SNR scales;
* ``[seed, 1, i]``: subject i's age, sex, affine, deformation and base CR, in that order;
* ``[seed, 2, i, k]``: the head position of session k > 0;
* ``[seed, 3, i, k]``: the session's T1w (bias field, noise);
* ``[seed, 4, i, k, a]``: acquisition a of the session (slab, S0, motion, bias field, noise).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .acquisition import acquire_nm, render_t1w, sidecar
from .anatomy import make_deformation, random_affine, template_model
from .cohort import (draw_age_sex, draw_base, draw_sites, group_and_site, parse_age_slope,
                     parse_effects, subject_cr)
from .geometry import apply, rigid
from .nuclei import BuiltinNuclei, load_nuclei
from .options import Options
from .regions import NUCLEI
from .truth import (acquisition_entry, nucleus_volumes, session_entry, subject_entry, truth_dseg,
                    truth_header)
from .writer import (anat_dir, write_dataset_files, write_json, write_nm, write_t1w,
                     write_truth_images)


def simulate_dataset(out_dir, n_subjects: int = 2, seed: int = 0, overwrite: bool = False,
                     verbose: bool = False, **options) -> Path:
    """Write a phantom BIDS dataset to ``out_dir/bids`` and its truth to ``out_dir/truth.json``.

    ``options`` are the fields of :class:`Options` (``acq=("gremt", "fse")``, ``t1w_res=1.5``,
    ...). Returns ``out_dir`` as a Path.
    """
    opts = Options.from_keywords(**options)
    if n_subjects < 1:
        raise ValueError("n_subjects must be >= 1")
    out = Path(out_dir)
    bids = out / "bids"
    targets = (bids, out / "truth", out / "truth.json")
    if not overwrite:
        for p in targets:
            if p.exists():
                raise FileExistsError(f"{p} exists; use --overwrite")
    effects = parse_effects(opts)
    slopes = parse_age_slope(opts.age_slope)
    default_nuclei = load_nuclei(opts.nuclei, opts.nuclei_labels)  # fail before writing
    tm = template_model(opts.template)
    for p in targets:
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    bids.mkdir(parents=True)
    width = max(2, len(str(n_subjects)))
    sites = draw_sites(opts, np.random.default_rng([seed, 7, 0]))
    nuclei_source = default_nuclei.source if opts.nuclei == "builtin" else str(opts.nuclei)
    truth = truth_header(opts, n_subjects, seed, tm, nuclei_source, sites)
    participants = []
    t_start = time.perf_counter()
    for i in range(n_subjects):
        sub = f"sub-{i + 1:0{width}d}"
        t0 = time.perf_counter()
        entry, row = _simulate_subject(i, sub, seed, opts, tm, default_nuclei, effects, slopes,
                                       sites, out)
        truth["subjects"][sub] = entry
        participants.append(row)
        if verbose:
            print(f"{sub}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    write_dataset_files(bids, opts, participants, tm, seed)
    write_json(out / "truth.json", truth)
    if verbose:
        print(f"done in {time.perf_counter() - t_start:.1f} s: {bids}", file=sys.stderr)
    return out


def _simulate_subject(i, sub, seed, opts, tm, default_nuclei, effects, slopes, sites, out):
    """Subject ``i``: its truth.json entry and participants.tsv row (images written)."""
    rng = np.random.default_rng([seed, 1, i])
    group, site = group_and_site(i, opts)
    age, sex = draw_age_sex(rng, opts)
    A0 = random_affine(rng)
    deform = make_deformation(tm, rng, opts.deform_mm)
    base = draw_base(rng, opts)
    cr, vol_scale = subject_cr(base, age, sex, group, sites[site]["cr_scale"], effects, slopes, opts)
    nuclei = BuiltinNuclei(vol_scale) if vol_scale else default_nuclei

    ses_labels = [f"ses-{k + 1}" for k in range(opts.sessions)] if opts.sessions > 1 else [None]
    P_list = []  # head position of each session (scanner mm, session 1 -> session k)
    for k in range(len(ses_labels)):
        if k == 0:
            P_list.append(np.eye(4))
        else:
            r = np.random.default_rng([seed, 2, i, k])
            head_c = apply(np.linalg.inv(A0), np.array([[0.0, -20.0, 10.0]]).T)[:, 0]
            P_list.append(rigid(r.uniform(-3, 3, 3), r.uniform(-5, 5, 3), head_c))
    vols_tpl, vcache = nucleus_volumes(nuclei, deform, A0)
    entry = subject_entry(group, age, sex, site, cr, vols_tpl, vcache, vol_scale)
    row = {"participant_id": sub, "age": age, "sex": sex, "group": group, "site": site}
    snr_scale = sites[site]["snr_scale"]
    for k, ses in enumerate(ses_labels):
        A = A0 @ np.linalg.inv(P_list[k])  # scanner (session k) -> template affine part
        prefix = sub if ses is None else f"{sub}_{ses}"
        rel_anat = anat_dir(sub, ses)
        srng = np.random.default_rng([seed, 3, i, k])
        t1, t1_aff = render_t1w(tm, A, deform, opts.t1w_res, srng, opts.t1w_snr, opts.bias,
                                opts.noise_free)
        t1_source = write_t1w(out / "bids", rel_anat, prefix, t1, t1_aff, sidecar("t1w", None, site))
        ses_entry = session_entry(A, deform, t1_source, opts)
        for a_idx, acq in enumerate(opts.acq):
            arng = np.random.default_rng([seed, 4, i, k, a_idx])
            nm = acquire_nm(acq, opts, tm, nuclei, deform, A, cr, snr_scale, arng)
            ses_entry["acquisitions"].append(
                _write_acquisition(nm, i, prefix, rel_anat, out, opts, site, A, vcache))
        entry["sessions"][ses or "n/a"] = ses_entry
    return entry, row


def _write_acquisition(nm, i, prefix, rel_anat, out, opts, site, A, vcache) -> dict:
    """Write one NM acquisition's images and truth images; returns its truth.json entry."""
    slab = nm.slab
    if nm.acq == "mtr":
        metas = [sidecar("mtr", slab, site, True), sidecar("mtr", slab, site, False)]
    else:
        metas = [sidecar(nm.acq, slab, site)]
    sources = write_nm(out / "bids", rel_anat, prefix, nm.acq, nm.images, slab.affine, metas,
                       opts, i)
    dseg = truth_dseg(nm.fractions, nm.refcore, slab.shape)
    bias = None if np.isscalar(nm.bias) else nm.bias.astype(np.float32)
    truth_files = write_truth_images(out, rel_anat, sources[0], slab.affine, dseg,
                                     nm.fractions.reshape(*slab.shape, len(NUCLEI)), bias)
    return acquisition_entry(nm, sources, vcache, A, truth_files)
