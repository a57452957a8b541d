"""The files: the BIDS raw dataset (images, sidecars, participants, description, README) and the truth images.

Everything that decides a file's name or layout is here: the NM names seen in the wild
(``--naming-variants``), how repeats are laid out (one 4D file or ``run-`` files), the truth
images' names (beside the NM source's name, under ``OUT/truth/``). The contents come from
the other modules; this one only names and writes them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nb
import numpy as np

from .. import __version__

if TYPE_CHECKING:
    from .options import Options

GENERATOR = "nmbids-simulate"
BIDS_VERSION = "1.10.0"
REPEATS_LAYOUTS = ("auto", "4d", "runs")
# BIDS requires _T1w images to be 3D (validator error T1W_FILE_WITH_TOO_MANY_DIMENSIONS).
SUFFIXES_3D_ONLY = ("T1w",)
# (acq- label, suffix) of the NM names spread over subjects by --naming-variants (first: default)
GREMT_VARIANTS = (("NM", "T1w"), ("neuromelanin", "T1w"), ("neuromelaninMTw", "T1w"),
                  ("NM", "T2starw"))
FSE_VARIANTS = (("FSE", "T1w"), ("TSE", "T1w"))


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, zooms4: float | None = None) -> None:
    """Write a NIfTI (q/sform code 1, mm and s; ``zooms4``: the time step of a 4D series)."""
    img = nb.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    if data.ndim == 3 or zooms4 is not None:
        hdr.set_dim_info(freq=0, phase=1, slice=2)
    if data.ndim == 4 and zooms4 is not None:
        hdr.set_zooms(hdr.get_zooms()[:3] + (zooms4,))
    hdr["descrip"] = GENERATOR.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(img, str(path))


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def anat_dir(sub: str, ses: str | None) -> Path:
    """``sub-X/[ses-Y/]anat``, relative to the BIDS root."""
    return Path(sub) / ses / "anat" if ses else Path(sub) / "anat"


def write_t1w(bids: Path, rel_anat: Path, prefix: str, data, affine, meta: dict) -> str:
    """Write the session's T1w and its sidecar; returns its path relative to ``bids``."""
    name = f"{prefix}_T1w.nii.gz"
    save_nifti(data, affine, bids / rel_anat / name)
    write_json(bids / rel_anat / f"{prefix}_T1w.json", meta)
    return str(rel_anat / name)


def write_nm(bids: Path, rel_anat: Path, prefix: str, acq: str, images, affine, sidecars,
             opts: Options, subject_index: int) -> list[str]:
    """Write one NM acquisition's images and sidecars; returns their paths relative to ``bids``.

    ``mtr``: ``sidecars`` = (mt-on, mt-off), one 3D image each. Otherwise one sidecar for every
    repeat; the name is the default ``acq-``/suffix or, with ``--naming-variants``, the
    subject's turn in the variants, and the repeats go to ``run-`` files or one 4D file
    (``--repeats-layout``; ``auto``: runs for ``_T1w`` names, 4D otherwise).
    """
    anat = bids / rel_anat
    sources = []
    if acq == "mtr":
        names = [f"{prefix}_mt-on_MTR", f"{prefix}_mt-off_MTR"]
        for name, img, meta in zip(names, images, sidecars):
            save_nifti(img, affine, anat / f"{name}.nii.gz")
            write_json(anat / f"{name}.json", meta)
            sources.append(str(rel_anat / f"{name}.nii.gz"))
        return sources
    meta, = sidecars
    n_rep = len(images)
    variants = GREMT_VARIANTS if acq == "gremt" else FSE_VARIANTS
    label, suffix = variants[subject_index % len(variants)] if opts.naming_variants else variants[0]
    layout = opts.repeats_layout
    if layout == "auto":
        layout = "runs" if suffix in SUFFIXES_3D_ONLY else "4d"
    if layout == "runs" and n_rep > 1:
        for r, img in enumerate(images, start=1):
            name = f"{prefix}_acq-{label}_run-{r}_{suffix}"
            save_nifti(img, affine, anat / f"{name}.nii.gz")
            write_json(anat / f"{name}.json", meta)
            sources.append(str(rel_anat / f"{name}.nii.gz"))
    else:
        name = f"{prefix}_acq-{label}_{suffix}"
        data = images[0] if n_rep == 1 else np.stack(images, axis=-1)
        # a 4D series steps by the time of one volume: TR x phase-encoding lines
        save_nifti(data, affine, anat / f"{name}.nii.gz",
                   zooms4=meta["RepetitionTime"] * images[0].shape[1] if n_rep > 1 else None)
        write_json(anat / f"{name}.json", meta)
        sources.append(str(rel_anat / f"{name}.nii.gz"))
    return sources


def write_truth_images(out: Path, rel_anat: Path, source: str, affine, dseg, probseg,
                       bias=None) -> tuple[Path, Path, Path | None]:
    """Write the truth images of one acquisition under ``out/truth/``, named after its first
    file (``_run-1`` dropped); returns their paths relative to ``out`` (bias: None without)."""
    stem = Path(source).name.replace(".nii.gz", "")
    stem = re.sub(r"_run-1(?=_)", "", stem)
    truth_rel = Path("truth") / rel_anat
    dseg_rel = truth_rel / f"{stem}_desc-truth_dseg.nii.gz"
    prob_rel = truth_rel / f"{stem}_desc-truth_probseg.nii.gz"
    save_nifti(dseg, affine, out / dseg_rel)
    save_nifti(probseg, affine, out / prob_rel)
    bias_rel = None
    if bias is not None:
        bias_rel = truth_rel / f"{stem}_desc-truth_biasfield.nii.gz"
        save_nifti(bias, affine, out / bias_rel)
    return dseg_rel, prob_rel, bias_rel


def write_dataset_files(bids: Path, opts: Options, participants, tm, seed) -> None:
    """dataset_description.json, README, participants.tsv and participants.json."""
    write_json(bids / "dataset_description.json", {
        "Name": "nmbids digital phantom (synthetic NM-MRI)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "Synthetic data derived from the MNI ICBM152 template; see README",
        "Authors": ["nmbids developers"],
        "GeneratedBy": [{"Name": GENERATOR, "Version": __version__,
                         "Description": f"seed {seed}; truth in ../truth.json"}],
    })
    readme = f"""# nmbids digital phantom

Synthetic neuromelanin-sensitive MRI written by `{GENERATOR}` {__version__} (seed {seed}).
Every image is simulated from the {tm.name} template ({tm.source}): a random affine and smooth
deformation per subject, tissue contrast per acquisition type, SN/VTA/LC nuclei at a known
contrast ratio, oblique slabs with partial volume, bias field, Rician noise and motion.
The ground truth (contrast ratios, volumes, transforms) is in `../truth.json`, outside this
dataset. Acquisitions: {", ".join(opts.acq)}.

The anatomy derives from the MNI ICBM152 2009 template: Copyright (C) 1993-2009 Louis Collins,
McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. Permission
to use, copy, modify, and distribute this software and its documentation for any purpose and
without fee is hereby granted, provided that the above copyright notice appear in all copies.
"""
    (bids / "README").write_text(readme)
    with open(bids / "participants.tsv", "w", newline="") as fh:
        fh.write("participant_id\tage\tsex\tgroup\tsite\n")
        for r in participants:
            fh.write(f"{r['participant_id']}\t{r['age']}\t{r['sex']}\t{r['group']}\t{r['site']}\n")
    write_json(bids / "participants.json", {
        "age": {"Description": "age at the first session", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
        "group": {"Description": "simulated cohort group", "Levels": {g: g for g in opts.groups}},
        "site": {"Description": "simulated acquisition site (scales CR and SNR, see truth.json)",
                 "Levels": {f"site{k + 1}": f"site {k + 1}" for k in range(opts.sites)}},
    })

