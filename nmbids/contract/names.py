"""Every output's name: the one place where the path of a file nmbids writes is decided.

The pipeline, the reports, the group level and the validation code build paths with these
functions and nothing else; docs/outputs.md lists the same files. A derivative's name is its
*prefix* (the entities of the source image it comes from) followed by nmbids' own entities in
BIDS order (``from``, ``to``, ``mode``, ``space``, ``desc``), a suffix and an extension::

    sub-01[_ses-A][_acq-NM][_rec-x]  [_space-MNI152NLin2009cAsym][_desc-preproc]  _NM  .nii.gz
    \\__ source_prefix(entities) __/  \\______________ derivative_name(...) ______________/

The ``run`` entity is never part of a prefix: the runs of an NM image are its repeats,
realigned and averaged into one derivative. What the group level needs to know about a file
(its acquisition type, its source, its space) is written into the file's JSON sidecar by the
participant level, and never re-derived from these names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# entities of a source image kept in the prefix of its derivatives, in BIDS order (pybids names)
PREFIX_ENTITIES = (("subject", "sub"), ("session", "ses"), ("acquisition", "acq"), ("ceagent", "ce"),
                   ("reconstruction", "rec"), ("direction", "dir"), ("echo", "echo"), ("flip", "flip"),
                   ("inversion", "inv"), ("part", "part"))

ANAT = "anat"  # every image derivative lives in the anat/ folder of its participant and session
ATLAS_DIR = "atlas"  # the atlas of the run, on the template grid
LOGS_DIR = "logs"  # the run's log and methods text
GROUP_DIR = "group"  # every group-level output
PARTICIPANT_LOG_DIR = "log"  # sub-<label>/log/<run id>/: summary.json, crash files
FIGURES_DIR = "figures"  # sub-<label>/figures/: the report's figures
CITATION = "CITATION.md"
SUMMARY = "summary.json"
RESOURCE_MONITOR = "resource_monitor.tsv"

# the endings the group level looks for (one per table); built by derivative_name below
MEASURES_TAIL = "_desc-nm_measures.tsv"
QC_TAIL = "_desc-nm_qc.tsv"
CRMAP_SUFFIX = "crmap"


def source_prefix(entities: dict) -> str:
    """The prefix of an image's derivatives: its entities of ``PREFIX_ENTITIES``, in order.

    An image without ``acq`` (``sub-01_mt-on_MTR``) gets its suffix as ``acq``, so that its
    derivatives never look like the session's own files (``sub-01_desc-...``).
    """
    ents = dict(entities)
    if "acquisition" not in ents and ents.get("suffix"):
        ents["acquisition"] = re.sub(r"[^A-Za-z0-9]", "", ents["suffix"])
    return "_".join(f"{short}-{ents[long]}" for long, short in PREFIX_ENTITIES if long in ents)


def _name_entities(source: str) -> dict:
    """The prefix entities and the suffix of a BIDS file name (pybids' names for them)."""
    tokens = Path(str(source)).name.split(".")[0].split("_")
    long_of = {short: long for long, short in PREFIX_ENTITIES}
    ents: dict = {}
    for token in tokens:
        key, sep, value = token.partition("-")
        if sep and key in long_of:
            ents.setdefault(long_of[key], value)
    if len(tokens) > 1 and "-" not in tokens[-1]:
        ents["suffix"] = tokens[-1]
    return ents


def prefix_of_source(source: str) -> str:
    """The prefix of a source's derivatives from its BIDS path alone (``source_prefix`` of the
    entities in its name), for outputs whose summary.json is lost; "" when it names no subject."""
    ents = _name_entities(source)
    return source_prefix(ents) if "subject" in ents else ""


def unique_prefix(source: str, taken: set) -> str:
    """The prefix of ``source``'s derivatives, distinct from those ``taken`` by other images of
    its session: two images that differ only by suffix (``acq-NM_T1w``, ``acq-NM_T2starw``)
    would write the same names, so the later one gets its suffix appended to its ``acq`` label
    (``acq-NMT2starw``)."""
    ents = _name_entities(source)
    prefix = source_prefix(ents)
    if prefix in taken and ents.get("suffix"):
        acq = ents.get("acquisition", "")
        prefix = source_prefix({**ents, "acquisition": acq + re.sub(r"[^A-Za-z0-9]", "", ents["suffix"])})
    return prefix


def session_prefix(participant: str, session: str | None) -> str:
    """The prefix of a session's own derivatives (its T1w, its tables)."""
    return source_prefix({"subject": participant, **({"session": session} if session else {})})


def derivative_name(prefix: str, suffix: str, extension: str = ".nii.gz", *, from_: str | None = None,
                    to: str | None = None, mode: str | None = None, space: str | None = None,
                    desc: str | None = None) -> str:
    """``<prefix>[_from-][_to-][_mode-][_space-][_desc-]_<suffix><extension>``."""
    ents = (("from", from_), ("to", to), ("mode", mode), ("space", space), ("desc", desc))
    return "_".join([prefix] + [f"{k}-{v}" for k, v in ents if v] + [suffix]) + extension


def sidecar(path: Path | str) -> Path:
    """The JSON sidecar of a derivative: its name up to the first dot, ``.json``."""
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + ".json")


def anat_dir(output_dir: Path, participant: str, session: str | None) -> Path:
    """``OUTPUT_DIR/sub-<label>[/ses-<label>]/anat``."""
    d = Path(output_dir) / f"sub-{participant}"
    return (d / f"ses-{session}" if session else d) / ANAT


@dataclass(frozen=True)
class SessionFiles:
    """The derivatives of a session as a whole: its T1w, its transforms, its two tables."""

    anat: Path
    prefix: str
    space: str

    @classmethod
    def of(cls, output_dir: Path, participant: str, session: str | None, space: str) -> "SessionFiles":
        return cls(anat_dir(output_dir, participant, session), session_prefix(participant, session), space)

    def _at(self, suffix: str, extension: str = ".nii.gz", **entities) -> Path:
        return self.anat / derivative_name(self.prefix, suffix, extension, **entities)

    @property
    def t1w_preproc(self) -> Path:
        return self._at("T1w", desc="preproc")

    @property
    def t1w_template(self) -> Path:
        return self._at("T1w", space=self.space, desc="preproc")

    @property
    def t1w_to_template_affine(self) -> Path:
        return self._at("xfm", ".mat", from_="T1w", to=self.space, mode="image", desc="affine")

    @property
    def t1w_to_template_warp(self) -> Path:
        return self._at("xfm", from_="T1w", to=self.space, mode="image", desc="warp")

    @property
    def template_to_t1w_warp(self) -> Path:
        return self._at("xfm", from_=self.space, to="T1w", mode="image", desc="warp")

    @property
    def measures(self) -> Path:
        return self._at("measures", ".tsv", desc="nm")

    @property
    def qc(self) -> Path:
        return self._at("qc", ".tsv", desc="nm")


@dataclass(frozen=True)
class NMFiles:
    """The derivatives of one NM image (its prefix is the source's)."""

    anat: Path
    prefix: str
    space: str

    @classmethod
    def of(cls, output_dir: Path, participant: str, session: str | None, prefix: str,
           space: str) -> "NMFiles":
        return cls(anat_dir(output_dir, participant, session), prefix, space)

    def _at(self, suffix: str, extension: str = ".nii.gz", **entities) -> Path:
        return self.anat / derivative_name(self.prefix, suffix, extension, **entities)

    @property
    def nm_preproc(self) -> Path:
        return self._at("NM", desc="preproc")

    @property
    def nm_t1w(self) -> Path:
        return self._at("NM", space="T1w", desc="preproc")

    @property
    def nm_template(self) -> Path:
        return self._at("NM", space=self.space, desc="preproc")

    @property
    def nm_to_t1w(self) -> Path:
        return self._at("xfm", ".mat", from_="NM", to="T1w", mode="image")

    @property
    def dseg(self) -> Path:
        return self._at("dseg", desc="rois")

    @property
    def dseg_labels(self) -> Path:
        return self._at("dseg", ".tsv", desc="rois")

    @property
    def crmap(self) -> Path:
        return self._at(CRMAP_SUFFIX, space=self.space)

    @property
    def mtrmap(self) -> Path:
        return self._at("MTRmap")

    @property
    def mtrmap_template(self) -> Path:
        return self._at("MTRmap", space=self.space)

    @property
    def mtemap(self) -> Path:
        return self._at("mtemap")

    @property
    def mtemap_template(self) -> Path:
        return self._at("mtemap", space=self.space)

    @property
    def motion(self) -> Path:
        return self._at("timeseries", ".tsv", desc="motion")


@dataclass(frozen=True)
class GroupFiles:
    """The group level's outputs, in ``OUTPUT_DIR/group`` (docs/group.md)."""

    root: Path

    @classmethod
    def of(cls, output_dir: Path) -> "GroupFiles":
        return cls(Path(output_dir) / GROUP_DIR)

    measures = property(lambda self: self.root / "group_measures.tsv")
    measures_wide = property(lambda self: self.root / "group_measures_wide.tsv")
    measures_combat = property(lambda self: self.root / "group_measures_combat.tsv")
    qc = property(lambda self: self.root / "group_qc.tsv")
    qc_outliers = property(lambda self: self.root / "group_qc_outliers.tsv")
    stats = property(lambda self: self.root / "group_stats.tsv")
    change = property(lambda self: self.root / "group_change.tsv")
    participants = property(lambda self: self.root / "group_participants.tsv")
    report = property(lambda self: self.root / "group_report.html")
    qc_report = property(lambda self: self.root / "group_qc.html")
    figures = property(lambda self: self.root / FIGURES_DIR)

    def voxelwise(self, contrast: str, what: str, extension: str) -> Path:
        """``voxelwise_<contrast>_<what><extension>`` (``what`` "" for the contrast's figure)."""
        return self.root / (f"voxelwise_{contrast}" + (f"_{what}" if what else "") + extension)

    def voxelwise_figure(self, contrast: str, what: str = "") -> Path:
        return self.figures / self.voxelwise(contrast, what, ".png").name


def atlas_paths(output_dir: Path, space: str) -> tuple[Path, Path]:
    """The run's atlas on the template grid: label image and its label table."""
    stem = Path(output_dir) / ATLAS_DIR / f"tpl-{space}_atlas-nmbids_dseg"
    return stem.with_suffix(".nii.gz"), stem.with_suffix(".tsv")


def atlas_sidecar(output_dir: Path, space: str) -> Path:
    """The run's atlas sidecar (JSON beside the label image): which atlas produced each region
    (``builtin``, ``cit168``, ``user``), from which files."""
    return sidecar(atlas_paths(output_dir, space)[0])


def atlas_space(path: Path) -> str | None:
    """The template space of an atlas image named by ``atlas_paths`` (its ``tpl-`` entity)."""
    m = re.match(r"^tpl-([A-Za-z0-9]+)_atlas-nmbids_dseg\.nii(\.gz)?$", Path(path).name)
    return m.group(1) if m else None


def report(output_dir: Path, participant: str) -> Path:
    """The participant's HTML report, ``OUTPUT_DIR/sub-<label>.html`` (as fMRIPrep's)."""
    return Path(output_dir) / f"sub-{participant}.html"


def figures_dir(output_dir: Path, participant: str) -> Path:
    return Path(output_dir) / f"sub-{participant}" / FIGURES_DIR


def figure(prefix: str, desc: str, suffix: str) -> str:
    """The name of a report figure (in ``figures_dir``)."""
    return derivative_name(prefix, suffix, ".svg", desc=desc)


def participant_log_root(output_dir: Path, participant: str) -> Path:
    """``sub-<label>/log``: one folder per run below it."""
    return Path(output_dir) / f"sub-{participant}" / PARTICIPANT_LOG_DIR


def participant_log_dir(output_dir: Path, participant: str, run_id: str) -> Path:
    """``sub-<label>/log/<run id>``: the run's summary.json and crash files."""
    return participant_log_root(output_dir, participant) / run_id


def run_log(output_dir: Path, run_id: str) -> Path:
    """The run's log file, ``OUTPUT_DIR/logs/nmbids_<run id>.log``."""
    return Path(output_dir) / LOGS_DIR / f"nmbids_{run_id}.log"


def citation(output_dir: Path) -> Path:
    return Path(output_dir) / LOGS_DIR / CITATION


# What the BIDS validator must not check: nmbids' own folders and the files with nmbids'
# suffixes (not in the BIDS specification). No trailing slash on folders:
# bids-validator-deno 3.0 does not honour "group/" (it does "group").
BIDSIGNORE = [ATLAS_DIR, LOGS_DIR, GROUP_DIR, "*.html", f"*/{FIGURES_DIR}", f"*/{PARTICIPANT_LOG_DIR}",
              "*_measures.*", "*_qc.*", f"*_{CRMAP_SUFFIX}.*", "*_NM.*", "*_timeseries.*", "*_MTRmap.*",
              "*_mtemap.*", "*_xfm.*"]
