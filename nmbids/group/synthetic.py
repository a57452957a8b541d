"""Synthetic participant-level outputs for testing and benchmarking the group level.

Writes what the participant level would (``docs/outputs.md``): measures and QC
tables per session, ``participants.tsv`` in a BIDS folder and, optionally, a
small template-space atlas and contrast-ratio maps with the JSON sidecars the
participant level writes (``AcquisitionType``, ``Sources``, ``SpatialReference``,
...). Effects are set in units of the between-participant SD of each outcome, so
tests can check that they are recovered.

``SimSpec.naming`` names the NM sources the way real datasets do (cycled over the
participants): ``single`` (``sub-X_acq-NM_T1w``), ``runs`` (``run-1``/``run-2``
repeats: the source is ``run-1``, the derivatives drop ``run-``), ``4d`` (one 4D
file of repeats) and ``mt`` (an MT-on/MT-off pair without ``acq-``: derivatives
named ``acq-MTR``, acquisition type MTR).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..acquisitions import GREMT, MTR, PROFILES
from ..outputs import bids_uri
from ..contract import names
from ..contract.tables import MEASURE_COLUMNS, QC_COLUMNS
from .outputs import tsv_text, write_json

# mean and between-participant SD of each measure
MEASURE_MOMENTS = {
    "cr": (0.20, 0.04, "ratio", "roi_mean"),
    "cr_roimean": (0.18, 0.04, "ratio", "roi_mean"),
    "cr_threshold": (0.30, 0.05, "ratio", "threshold"),
    "cnr": (3.0, 0.8, "ratio", "roi_mean"),
    "volume_mm3": (300.0, 60.0, "mm3", "threshold"),
    "coverage": (0.97, 0.02, "fraction", "roi_mean"),
    "reference_value": (100.0, 15.0, "a.u.", "roi_mean"),
}
TARGETS = ("SN", "VTA", "LC")
REFERENCES = {"SN": "CC", "VTA": "CC", "LC": "PT"}
SPACE = "SYN"


@dataclass
class SimSpec:
    n_per_group: dict = field(default_factory=lambda: {"HC": 20, "SZ": 20})
    # group level -> effect in SD units on the outcomes in ``effect_outcomes``
    effects: dict = field(default_factory=dict)
    effect_outcomes: tuple = (("SN", "L", "cr"), ("SN", "R", "cr"), ("SN", "bilateral", "cr"))
    rois: tuple = TARGETS
    hemis: tuple = ("L", "R", "bilateral")
    measures: tuple = ("cr", "cnr", "volume_mm3", "coverage")
    sessions: tuple | None = None  # e.g. ("1", "2")
    session_change: float = 0.0  # SD units per later session, on effect_outcomes
    sites: dict | None = None  # site -> offset in SD units on every outcome; participants assigned in turn
    age_slope: float = 0.0  # SD units per 10 years on effect_outcomes
    seed: int = 0
    crmaps: bool = False
    blob_effect: float = 0.0  # CR units added inside the blob for non-reference groups
    map_noise: float = 0.04
    naming: tuple = ("single",)  # NM source naming styles, cycled over participants (NAMING)


# naming style -> (name of the NM source after "sub-X[_ses-Y]_", its partner (MT-off) or None,
# derivative prefix entities, acquisition type, repeats)
NAMING = {
    "single": ("acq-NM_T1w.nii.gz", None, "acq-NM", GREMT, 3),
    "runs": ("acq-neuromelanin_run-1_NM.nii.gz", None, "acq-neuromelanin", GREMT, 2),
    "4d": ("acq-gre_NM.nii.gz", None, "acq-gre", GREMT, 4),
    "mt": ("mt-on_MTR.nii.gz", "mt-off_MTR.nii.gz", "acq-MTR", MTR, 1),
}


def nm_source(pid: str, ses: str | None, style: str) -> dict:
    """The NM source of participant ``pid`` (session label ``ses`` or None) named in ``style``."""
    name, partner, prefix, acq, repeats = NAMING[style]
    folder = f"{pid}/{'ses-' + ses + '/' if ses else ''}anat/"
    stem = pid + (f"_ses-{ses}" if ses else "")
    sources = [f"{folder}{stem}_{name}"] + ([f"{folder}{stem}_{partner}"] if partner else [])
    return {"source": sources[0], "sources": sources, "map_prefix": f"{stem}_{prefix}", "acq_type": acq,
            "repeats": repeats}


def _styles(spec: SimSpec, parts: pd.DataFrame) -> list[str]:
    return [spec.naming[i % len(spec.naming)] for i in range(len(parts))]


def _participants(spec: SimSpec, rng: np.random.Generator) -> pd.DataFrame:
    groups = [g for g, n in spec.n_per_group.items() for _ in range(n)]
    n = len(groups)
    width = max(3, len(str(n)))
    df = pd.DataFrame({
        "participant_id": [f"sub-{i + 1:0{width}d}" for i in range(n)],
        "group": groups,
        "age": np.round(rng.uniform(20, 60, n), 1),
        "sex": rng.choice(["F", "M"], n),
    })
    if spec.sites:
        names = list(spec.sites)
        df["site"] = [names[i % len(names)] for i in range(n)]
    return df


def _space(roi: str, measure: str, acq_type: str = GREMT) -> str:
    """Where a participant table of ``acq_type`` measures ``roi`` (coverage: always the template)."""
    return "template" if measure == "coverage" else PROFILES[acq_type].space_of(roi.split("_")[0])


def make_measures(spec: SimSpec, parts: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Long measures rows for every participant and session (vectorised)."""
    sessions = list(spec.sessions) if spec.sessions else [None]
    outcomes = [(r, h, m) for r in spec.rois for h in spec.hemis for m in spec.measures]
    n_p, n_o = len(parts), len(outcomes)
    mu = np.array([MEASURE_MOMENTS[m][0] for _, _, m in outcomes])
    sd = np.array([MEASURE_MOMENTS[m][1] for _, _, m in outcomes])
    affected = np.array([o in spec.effect_outcomes for o in outcomes])
    trait = rng.standard_normal((n_p, n_o))  # stable participant effect
    shift = np.zeros((n_p, n_o))
    grp = parts["group"].to_numpy()
    for level, d in spec.effects.items():
        shift[np.ix_(grp == level, affected)] += d
    shift[:, affected] += spec.age_slope * ((parts["age"].to_numpy() - 40.0) / 10.0)[:, None]
    if spec.sites:
        off = parts["site"].map(spec.sites).to_numpy(dtype=float)
        shift += off[:, None]
    frames = []
    for k, ses in enumerate(sessions):
        z = trait + shift + (0.3 * rng.standard_normal((n_p, n_o)) if ses else 0)
        if k:
            z[:, affected] += spec.session_change * k
        vals = mu + sd * z
        ses_id = f"ses-{ses}" if ses else "n/a"
        pid = np.repeat(parts["participant_id"].to_numpy(), n_o)
        nms = [nm_source(p, ses, st) for p, st in zip(parts["participant_id"], _styles(spec, parts))]
        acqs = [nm["acq_type"] for nm in nms]
        frames.append(pd.DataFrame({
            "participant_id": pid,
            "session_id": ses_id,
            "source": np.repeat([nm["source"] for nm in nms], n_o),
            "acq_type": np.repeat(acqs, n_o),
            "roi": np.tile([o[0] for o in outcomes], n_p),
            "hemi": np.tile([o[1] for o in outcomes], n_p),
            "measure": np.tile([o[2] for o in outcomes], n_p),
            "value": vals.ravel(),
            "unit": np.tile([MEASURE_MOMENTS[o[2]][2] for o in outcomes], n_p),
            "method": np.tile([MEASURE_MOMENTS[o[2]][3] for o in outcomes], n_p),
            "space": np.concatenate([[_space(o[0], o[2], a) for o in outcomes] for a in acqs]),
            "reference": np.tile([REFERENCES.get(o[0], "n/a") for o in outcomes], n_p),
            "ref_stat": "mode",
        }))
    return pd.concat(frames, ignore_index=True)[MEASURE_COLUMNS]


def make_qc(parts: pd.DataFrame, sessions, rng, naming: tuple = ("single",)) -> pd.DataFrame:
    rows = []
    styles = [naming[i % len(naming)] for i in range(len(parts))]
    for ses in (sessions or [None]):
        n = len(parts)
        ses_id = f"ses-{ses}" if ses else "n/a"
        nms = [nm_source(p, ses, st) for p, st in zip(parts["participant_id"], styles)]
        rows.append(pd.DataFrame({
            "participant_id": parts["participant_id"],
            "session_id": ses_id,
            "source": [nm["source"] for nm in nms],
            "acq_type": [nm["acq_type"] for nm in nms],
            "n_repeats": [nm["repeats"] for nm in nms],
            "motion_mean_mm": np.round(rng.gamma(2, 0.1, n), 3),
            "motion_max_mm": np.round(rng.gamma(2, 0.2, n), 3),
            "snr": np.round(rng.normal(20, 3, n), 2),
            "neighbour_distance": 1,
            "slice_tilt_deg": np.round(np.linspace(2.0, 18.0, n), 1),  # oblique axial slabs (no draw: the rest stays)
            "nm2t1w_similarity": np.round(rng.uniform(0.5, 0.8, n), 3),
            "t1w2template_similarity": np.round(rng.uniform(0.6, 0.9, n), 3),
            "coverage_SN": 1.0, "coverage_VTA": 1.0, "coverage_LC": 0.9,
            "flags": "n/a",
        }))
    return pd.concat(rows, ignore_index=True)[QC_COLUMNS]


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------

GRID = (20, 20, 16)
AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -40], [0, 0, 2.0, -30], [0, 0, 0, 1]])
ATLAS_ROWS = [  # index, name, roi, hemi, kind, box (slices)
    (1, "SN_L", "SN", "L", "target", (slice(3, 8), slice(4, 9), slice(9, 13))),
    (2, "SN_R", "SN", "R", "target", (slice(12, 17), slice(4, 9), slice(9, 13))),
    (3, "VTA_L", "VTA", "L", "target", (slice(8, 10), slice(5, 9), slice(9, 12))),
    (4, "VTA_R", "VTA", "R", "target", (slice(10, 12), slice(5, 9), slice(9, 12))),
    (5, "LC_L", "LC", "L", "target", (slice(7, 9), slice(13, 15), slice(2, 8))),
    (6, "LC_R", "LC", "R", "target", (slice(11, 13), slice(13, 15), slice(2, 8))),
    (7, "CC_L", "CC", "L", "reference", (slice(2, 6), slice(1, 4), slice(9, 13))),
    (8, "CC_R", "CC", "R", "reference", (slice(14, 18), slice(1, 4), slice(9, 13))),
]
# the blob: inside SN_L
BLOB = (slice(4, 7), slice(5, 8), slice(10, 12))


def write_atlas(output_dir: Path, space: str = SPACE):
    import nibabel as nb

    data = np.zeros(GRID, dtype=np.int16)
    for idx, _, _, _, _, box in ATLAS_ROWS:
        data[box] = idx
    nii, tsv_path = names.atlas_paths(output_dir, space)
    nii.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(data, AFFINE).to_filename(str(nii))
    tsv = pd.DataFrame([r[:5] for r in ATLAS_ROWS], columns=["index", "name", "roi", "hemi", "kind"])
    tsv_path.write_text(tsv_text(tsv))
    return data


def crmap_sidecar(nm: dict, space: str = SPACE) -> dict:
    """The sidecar the participant level writes beside ``*_space-<space>_crmap.nii.gz``."""
    profile = PROFILES[nm["acq_type"]]
    return {"Sources": [bids_uri(s) for s in nm["sources"]], "AcquisitionType": nm["acq_type"],
            "ClassificationEvidence": ["nmbids.group.synthetic"], "Repeats": nm["repeats"],
            "SpatialReference": space, "Units": "ratio", "Formula": "(I - ref(R)) / ref(R)",
            "ReferenceRegion": profile.map_reference, "ReferenceStatistic": "median", "ReferenceValue": 100.0}


def write_crmap(path: Path, rng, effect: float, noise: float, atlas: np.ndarray, nan_outside: bool = True,
                sidecar: dict | None = None):
    import nibabel as nb

    data = np.full(GRID, 0.02, dtype=np.float32)
    data[atlas > 0] = 0.2
    data += noise * rng.standard_normal(GRID).astype(np.float32)
    data[BLOB] += effect
    if nan_outside:
        data[:, :, 0] = np.nan  # the slab does not cover the lowest slice
    nb.Nifti1Image(data, AFFINE).to_filename(str(path))
    if sidecar is not None:
        write_json(names.sidecar(path), sidecar)


# ---------------------------------------------------------------------------
# the whole dataset
# ---------------------------------------------------------------------------

def simulate(bids_dir: Path, output_dir: Path, spec: SimSpec | None = None) -> pd.DataFrame:
    """Write participants.tsv, measures/QC tables (and maps) for ``spec``; return participants."""
    spec = spec or SimSpec()
    rng = np.random.default_rng(spec.seed)
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    bids_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    parts = _participants(spec, rng)
    (bids_dir / "participants.tsv").write_text(tsv_text(parts))
    (bids_dir / "dataset_description.json").write_text(
        '{"Name": "nmbids synthetic", "BIDSVersion": "1.10.0", "DatasetType": "raw"}\n')
    (output_dir / "dataset_description.json").write_text(
        '{"Name": "nmbids synthetic outputs", "BIDSVersion": "1.10.0", "DatasetType": "derivative", '
        '"GeneratedBy": [{"Name": "nmbids.group.synthetic"}]}\n')
    measures = make_measures(spec, parts, rng)
    qc = make_qc(parts, spec.sessions, rng, spec.naming)
    atlas = write_atlas(output_dir) if spec.crmaps else None
    reference = next(iter(spec.n_per_group))
    m_groups = measures.groupby(["participant_id", "session_id"], sort=False)
    q_groups = dict(list(qc.groupby(["participant_id", "session_id"], sort=False)))
    group_of = dict(zip(parts["participant_id"], parts["group"]))
    style_of = dict(zip(parts["participant_id"], _styles(spec, parts)))
    for (pid, ses), rows in m_groups:
        anat = output_dir / pid / (ses if ses != "n/a" else "") / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        files = names.SessionFiles(anat, names.session_prefix(pid[len("sub-"):], ses[len("ses-"):] if ses != "n/a"
                                                             else None), SPACE)
        files.measures.write_text(tsv_text(rows))
        q = q_groups.get((pid, ses))
        if q is not None:
            files.qc.write_text(tsv_text(q))
        if atlas is not None:
            effect = spec.blob_effect if group_of[pid] != reference else 0.0
            nm = nm_source(pid, ses[len("ses-"):] if ses != "n/a" else None, style_of[pid])
            write_crmap(names.NMFiles(anat, nm["map_prefix"], SPACE).crmap, rng, effect, spec.map_noise, atlas,
                        sidecar=crmap_sidecar(nm))
    return parts
