"""Discovery: from a BIDS dataset to a plain, printable plan of what to process.

nmbids reads only what it needs: the ``sub-*/[ses-*/]anat`` folders of the selected subjects,
walked directly (``AnatLayout``), with entities parsed by pybids' own BIDS path patterns and
without validation (it would silently drop files with invented suffixes, and NM images have no
BIDS suffix of their own). Sidecars are read per image, with inheritance. There is no index
database, so cluster jobs share nothing; a 2,000-subject dataset is planned in about two seconds
(``benchmarks/bench_discovery.py``, docs/performance.md), where a default ``pybids.BIDSLayout``
takes minutes. The only image bytes read are the headers of ``*_T1w`` files (head or slab?).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from .acquisitions import (MTR, classify, head_t1w_rank, looks_like_nm, name_looks_like_nm,
                           slab_shape)
from .contract.exits import EXIT_NO_FILES, EXIT_NO_INPUT, EXIT_USAGE, NmbidsError
from .contract.names import session_prefix, source_prefix, unique_prefix

# How to name NM images so that nmbids finds them: the one hint every "not found" line gives.
NM_NAMING_HINT = ("nmbids reads visible BIDS names in anat/: NM images as sub-<label>[_ses-<label>]_acq-NM_T1w"
                  ".nii.gz (acq-FSE for spin echo, or any suffix with a neuromelanin/NM acq- label or MTState "
                  "in the sidecar) and MT pairs as _mt-on_MTR/_mt-off_MTR")
# the reason recorded for an NM image refused because its session has no usable T1w
NO_T1W_REASON = "no usable T1w"
NM_SUFFIXES = {"T1w", "T2w", "T2starw", "MEGRE", "MTR", "MTS", "MPM", "PDw", "FLASH", "NM"}
@dataclass
class NMInput:
    """One NM measurement: its repeats (several runs or one 4D file) and its kind."""

    source: str  # BIDS-relative path of the first file: the ``source`` column
    files: list[str]  # absolute paths, one per run (a 4D file counts once)
    acq_type: str | None
    evidence: list[str]
    prefix: str  # derivative file prefix (entities of the source, without run)
    mt_off: str | None = None  # the mt-off partner of an mt-on image (MTR pairs)
    metadata: dict = field(default_factory=dict)


@dataclass
class SessionPlan:
    """One session's inputs. ``ignored`` lists the files left out, each with a ``reason``; a
    ``problem`` key ("error": bad data, "warning") marks the ones the user must be told about."""

    participant: str  # label without "sub-"
    session: str | None  # label without "ses-", None when the dataset has no sessions
    t1w: str | None
    t1w_note: str | None
    nm: list[NMInput]
    ignored: list[dict]  # an ``nm`` key marks the files that look like NM images
    # what the user must hear about the session as a whole: [{"path", "message"}]
    warnings: list[dict] = field(default_factory=list)
    n_anat: int = 0  # anat images seen in the session, hidden ones included

    @property
    def session_id(self) -> str:
        return f"ses-{self.session}" if self.session else "n/a"

    @property
    def prefix(self) -> str:
        return session_prefix(self.participant, self.session)

    def to_dict(self) -> dict:
        return asdict(self)

    def unused_nm(self) -> list[dict]:
        """The NM-looking files of this session that are not (or no longer) to be processed."""
        return [i for i in self.ignored if i.get("nm")]


def strip_prefix(label: str, prefix: str) -> str:
    return label[len(prefix):] if label.startswith(prefix) else label


_SAFE_LABEL = re.compile(r"^[A-Za-z0-9]+$")
# what an anat file of participant P may be called: pybids parses laxer names (sub-01;x,
# acq-NM$(x)) into the labels they start with, which would merge them into real acquisitions
_BIDS_ANAT = r"sub-{p}/(ses-(?P<ses>[A-Za-z0-9]+)/)?anat/sub-{p}(_ses-(?P=ses))?(_[A-Za-z]+-[A-Za-z0-9]+)*" \
             r"_[A-Za-z0-9]+\.nii(\.gz)?"


def check_label(label: str, what: str) -> str:
    """BIDS labels are alphanumeric; anything else could escape the output directory."""
    if not _SAFE_LABEL.match(label):
        raise NmbidsError(f"invalid {what} label {label!r} (BIDS labels are letters and digits only)",
                          code=64)
    return label


# folders pybids' indexer was told to skip (other modalities, hidden folders)
_SKIP_DIRS = re.compile(r"^(func|dwi|fmap|perf|beh|eeg|meg|ieeg|pet|micr|nirs|motion|\..*)$")
_NIFTI = (".nii", ".nii.gz")


class AnatFile:
    """An anat image: its absolute path and its entities (as pybids would parse them)."""

    __slots__ = ("path", "entities")

    def __init__(self, path: str, entities: dict):
        self.path, self.entities = path, entities

    def get_entities(self) -> dict:
        return dict(self.entities)


@lru_cache(maxsize=1)
def _entity_parsers() -> dict:
    """pybids' BIDS entity patterns and types: names parse exactly as pybids parses them."""
    from bids.layout.models import Config

    return {e.name: (e.regex, e._astype) for e in Config.load("bids").entities.values()}


_SUBJECT_DIR = re.compile(r"sub-[A-Za-z0-9]+")


class AnatLayout:
    """The anat images of the selected subjects, found by walking their folders.

    Offers the queries discovery needs (``get_subjects``, ``get_sessions``, ``get``) and the
    folder listings that sidecar inheritance needs, each folder listed once. A subject counts
    when its folder holds any file outside the skipped folders (as it did for pybids).
    """

    def __init__(self, root: Path, participants=None):
        from bids.utils import natural_sort

        self.root = Path(root)
        self._sort = natural_sort
        self._parsers = _entity_parsers()
        self._listings: dict[str, list[str]] = {}
        self._files: dict[str, list[AnatFile]] = {}  # subject -> its anat NIfTI images
        self._sessions: dict[str, set] = {}  # subject -> its session labels
        self._hidden: dict[str, list[str]] = {}  # subject -> hidden anat images (".sub-01_NM.nii.gz")
        wanted = set(participants) if participants else None
        for name in os.listdir(self.root):
            # a BIDS label is letters and digits: "sub-..", "sub-a b", "sub-01;x" are not subjects
            if (_SUBJECT_DIR.fullmatch(name) and (wanted is None or name[4:] in wanted)
                    and (self.root / name).is_dir()):
                self._walk_subject(name[4:])

    def _walk_subject(self, label: str) -> None:
        session_re = self._parsers["session"][0]
        root = str(self.root)
        for folder, dirs, names in os.walk(os.path.join(root, f"sub-{label}")):
            dirs[:] = [d for d in dirs if not _SKIP_DIRS.match(d)]
            names = [n for n in names if not n.startswith(".")]
            if names:
                self._files.setdefault(label, [])
            rel_folder = folder[len(root):].replace(os.sep, "/")  # "/sub-01/anat"
            for m in filter(None, (session_re.search(f"{rel_folder}/{n}") for n in names)):
                self._sessions.setdefault(label, set()).add(m.group(1))
            if os.path.basename(folder) != "anat":
                continue
            self._listings[folder] = sorted(names)
            # hidden files are never used, but the user must hear of hidden NM images
            self._hidden.setdefault(label, []).extend(
                os.path.join(folder, n) for n in sorted(os.listdir(folder))
                if n.startswith(".") and n.endswith(_NIFTI))
            for name in (n for n in names if n.endswith(_NIFTI)):
                ents = self._entities(f"{rel_folder}/{name}")
                if ents.get("datatype") == "anat" and ents.get("extension") in _NIFTI:
                    self._files[label].append(AnatFile(os.path.join(folder, name), ents))

    def _entities(self, rel: str) -> dict:
        ents = {}
        for name, (regex, astype) in self._parsers.items():
            m = regex.search(rel)
            if m is not None:
                ents[name] = astype(m.group(1))
        return ents

    def get_subjects(self) -> list[str]:
        return self._sort(list(self._files))

    def get_sessions(self, subject: str) -> list[str]:
        return self._sort(list(self._sessions.get(subject, ())))

    def get(self, subject: str, session: str | None = None) -> list[AnatFile]:
        """The subject's anat NIfTI images (of one session when ``session`` is given)."""
        return [f for f in self._files.get(subject, [])
                if session is None or f.entities.get("session") == session]

    def hidden(self, subject: str, session: str | None = None) -> list[str]:
        """Hidden (``.``-prefixed) NIfTI files in the subject's anat folders (of one session)."""
        session_re = self._parsers["session"][0]
        out = []
        for path in self._hidden.get(subject, []):
            m = session_re.search(Path(path).relative_to(self.root).parent.as_posix() + "/")
            if session is None or (m is not None and m.group(1) == session):
                out.append(path)
        return out

    def listing(self, folder: Path) -> list[str]:
        """File names in ``folder`` (cached: the dataset root is listed once, not per image)."""
        key = str(folder)
        if key not in self._listings:
            try:
                self._listings[key] = sorted(e.name for e in os.scandir(key)
                                             if e.is_file() and not e.name.startswith("."))
            except OSError:
                self._listings[key] = []
        return self._listings[key]


def load_layout(bids_dir: Path, participants=None, database_dir: Path | None = None) -> AnatLayout:
    """The anat images of ``participants`` (all when None). ``database_dir`` is accepted for
    compatibility and unused: nothing is indexed to disk."""
    return AnatLayout(Path(bids_dir), participants)


def _read_sidecar(bids_file, bids_dir: Path, layout: AnatLayout) -> tuple[dict, str | None]:
    """Sidecar metadata with BIDS inheritance, read ourselves so that a broken JSON is
    reported for that file instead of breaking discovery.

    Applicable sidecars (the BIDS inheritance principle): in the file's folder and every parent
    up to the root, JSON files with the same suffix whose entities are a subset of the file's.
    They are merged from the root down, and within a folder from the fewest entities to the
    most, so that the more specific value wins at every level (names break ties).
    """
    path = Path(bids_file.path)
    name = path.name.split(".")[0]
    parts = name.split("_")
    suffix, pairs = parts[-1], set(parts[:-1])
    folders, root = [path.parent], Path(bids_dir)
    while folders[-1] != root and root in folders[-1].parents:
        folders.append(folders[-1].parent)
    meta: dict = {}
    for folder in reversed(folders):  # root first, nearest last
        applicable = []
        for cand_name in layout.listing(folder):
            if not cand_name.endswith(f"{suffix}.json"):
                continue
            cparts = cand_name[:-5].split("_")
            if cparts[-1] != suffix or not set(cparts[:-1]) <= pairs:
                continue
            applicable.append((len(cparts), cand_name))
        for _, cand_name in sorted(applicable):  # least specific first: the most specific wins
            cand = folder / cand_name
            try:
                meta.update(json.loads(cand.read_text()))
            except (ValueError, UnicodeDecodeError, OSError) as err:
                return meta, f"sidecar {cand.name} is not valid JSON ({err.__class__.__name__})"
    return meta, None


def _geometry(path: str) -> tuple | None:
    """(shape, voxel sizes) from the NIfTI header alone, or None when the file cannot be read
    as one (preflight reports that). Reads the 348 header bytes itself: ``nibabel.load`` costs
    five times more, which a 2,000-subject discovery would feel."""
    import gzip
    import io

    import nibabel as nb

    try:
        with open(path, "rb") as fh:
            compressed = fh.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as fh:
            block = fh.read(348)
        header = nb.Nifti1Header.from_fileobj(io.BytesIO(block), check=False)
        if int(header["sizeof_hdr"]) != 348:  # NIfTI-2 (540 bytes): let nibabel read it
            header = nb.load(path).header
        return header.get_data_shape(), header.get_zooms()
    except Exception:  # empty, truncated or not NIfTI: nibabel raises many types
        return None


def plan_participant(layout, bids_dir: Path, participant: str, sessions=None,
                     filters: dict | None = None) -> list[SessionPlan]:
    """The plan for one participant: one ``SessionPlan`` per session (or one without)."""
    filters = filters or {}
    all_sessions = layout.get_sessions(subject=participant) or [None]
    if sessions:
        all_sessions = [s for s in all_sessions if s in sessions]
    plans = []
    subject_t1w = []  # (session, path) for sessions that have a T1w, to lend to others
    for ses in all_sessions:
        files = layout.get(participant, ses)
        t1w_cands, nm_groups, ignored, warnings = [], {}, [], []
        forced = filters.get("nm", {}).get("acq_type")
        valid_name = re.compile(_BIDS_ANAT.format(p=re.escape(participant)))
        names = {Path(f.path).name for f in files}
        for path in layout.hidden(participant, ses):
            looks = name_looks_like_nm(Path(path).name)
            ignored.append({"path": Path(path).relative_to(bids_dir).as_posix(),
                            "reason": "hidden file (its name starts with '.'): not read"
                            + (f"; if it is an NM image, rename it: {NM_NAMING_HINT}" if looks else ""),
                            **({"nm": True, "problem": "warning"} if looks else {})})
        for f in sorted(files, key=lambda f: f.path):
            ents = dict(f.get_entities())
            rel = Path(f.path).relative_to(bids_dir).as_posix()
            if not valid_name.fullmatch(rel):
                looks = name_looks_like_nm(Path(rel).name)
                ignored.append({"path": rel, "reason": "not a valid BIDS file name (labels are letters "
                                "and digits only)" + (f"; {NM_NAMING_HINT}" if looks else ""),
                                "problem": "warning", **({"nm": True} if looks else {})})
                continue
            if rel.endswith(".nii") and Path(f.path).name + ".gz" in names:
                ignored.append({"path": rel, "reason": f"duplicate of {Path(f.path).name}.gz, which is used"})
                continue
            meta, meta_err = _read_sidecar(f, bids_dir, layout)
            suffix = ents.get("suffix")
            if meta_err:
                ignored.append({"path": rel, "reason": meta_err, "problem": "error",
                                **({"nm": True} if looks_like_nm(ents, {}) else {})})
                continue
            # only T1w-suffixed images can be mistaken for the anatomy: read their header
            geometry = _geometry(f.path) if suffix == "T1w" else None
            slab = slab_shape(*geometry) if geometry else None
            if looks_like_nm(ents, meta, slab) and suffix in NM_SUFFIXES:
                if not filter_matches(ents, filters.get("nm")):
                    ignored.append({"path": rel, "reason": "excluded by --bids-filter-file (nm)", "nm": True})
                    continue
                acq_type, evidence = classify(ents, meta)
                if slab and suffix == "T1w":
                    evidence = evidence + [f"a T1w-suffixed slab ({slab}): not a head T1w"]
                if forced:
                    acq_type, evidence = forced, evidence + ["acq_type set by --bids-filter-file"]
                if acq_type is None:
                    ignored.append({"path": rel, "reason": "NM-like image of unknown acquisition type; "
                                    "tell nmbids what it is with --bids-filter-file "
                                    "{\"nm\": {\"acq_type\": \"GREMT\"}} (or \"FSE\")", "problem": "warning",
                                    "nm": True})
                    continue
                # runs of the same acquisition are repeats to realign and average
                key = tuple(sorted((k, str(v)) for k, v in ents.items()
                                   if k not in ("run", "extension")))
                nm_groups.setdefault(key, []).append((f, ents, rel, acq_type, evidence, meta))
            elif suffix == "T1w" and slab:
                # never the T1w (too small to carry a head to the template), and not known as NM
                ignored.append({"path": rel, "reason": f"a T1w-suffixed slab ({slab}) cannot be the T1w, and "
                                "its sidecar says neither spin echo nor MT; if it is an NM image, "
                                f"say so in its name: {NM_NAMING_HINT}", "problem": "warning", "nm": True})
            elif suffix == "T1w":
                if filter_matches(ents, filters.get("t1w")):
                    t1w_cands.append((f, ents, rel, head_t1w_rank(meta)))
                else:
                    ignored.append({"path": rel, "reason": "excluded by --bids-filter-file (t1w)"})
            else:
                ignored.append({"path": rel, "reason": f"not used by nmbids (suffix {suffix})"})
        nm_inputs = _pair_and_build(nm_groups, ignored)
        t1w, note = None, None
        if t1w_cands:
            t1w_cands.sort(key=_t1w_order)
            t1w, chosen = t1w_cands[0][0].path, t1w_cands[0]
            others = []
            for c in t1w_cands[1:]:
                why = (f"{_run_label(c)} of the same T1w; runs are not averaged"
                       if _same_but_run(c[1], chosen[1]) else f"ranked lower: {c[3][1]}")
                ignored.append({"path": c[2], "reason": f"another T1w was used ({chosen[2]}): {why}"})
                others.append(f"{Path(c[2]).name} ({why})")
            if others:
                runs = [c[1].get("run", 0) or 0 for c in t1w_cands[1:] if _same_but_run(c[1], chosen[1])]
                first = " the first run," if runs and (chosen[1].get("run", 0) or 0) < min(runs) else ""
                warnings.append({"path": chosen[2], "message": f"{len(t1w_cands)} T1w candidates: used{first} "
                                 f"{Path(chosen[2]).name} ({chosen[3][1]}); not used: {'; '.join(others)}"})
            subject_t1w.append((ses, t1w))
        n_anat = len(files) + len(layout.hidden(participant, ses))
        plans.append(SessionPlan(participant, ses, t1w, note, nm_inputs, ignored, warnings, n_anat))
    # A session without its own T1w borrows the subject's nearest one (in session order).
    order = [p.session for p in plans]
    for plan in plans:
        if plan.t1w is None and subject_t1w and plan.nm:
            ses, path = min(subject_t1w, key=lambda sp: abs(order.index(sp[0]) - order.index(plan.session))
                            if sp[0] in order else 0)
            plan.t1w = path
            plan.t1w_note = f"no T1w in this session: used the T1w of ses-{ses}"
    return plans


def _t1w_order(cand) -> tuple:
    """Best T1w first: by what its sidecar says it is (a 3D gradient echo / inversion recovery
    before a sidecar that does not say, before 2D or spin echo), then a plain name (no acq-),
    then the first run."""
    _, ents, rel, (rank, _) = cand
    return rank, "acquisition" in ents, ents.get("run", 0) or 0, rel


def _same_but_run(a: dict, b: dict) -> bool:
    strip = ("run", "extension")
    return {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}


def _run_label(cand) -> str:
    return f"run-{cand[1]['run']}" if cand[1].get("run") is not None else Path(cand[2]).name


# --bids-filter-file: queries as pybids' BIDSLayout.get() takes them (fMRIPrep's filter files).
# Besides entity names, a query may hold "regex_search" (pybids' get() keyword) and, in "nm" only,
# nmbids' own "acq_type".
FILTER_QUERIES = ("t1w", "nm")
ANY_VALUE = "*"  # pybids Query.ANY as a filter file writes it; JSON null is Query.NONE


def filter_matches(entities: dict, query: dict | None) -> bool:
    """Whether a file with ``entities`` passes one query of the filter file, as pybids'
    ``BIDSLayout.get(**query)`` decides it (fMRIPrep writes ``Query.ANY`` as ``"*"`` and
    ``Query.NONE`` as ``null``).

    Each entity key must hold: ``"*"``: the entity is present, any value; ``null``: it is
    absent; a list: any of its values (which may include ``"*"`` and ``null``; an empty list
    constrains nothing, as in pybids); any other value: that exact value (``run: 1`` matches
    ``run-01``; ``extension`` with or without its dot). With ``"regex_search": true`` the
    other values are regular expressions searched in the entity's value (``re.search``,
    ignoring case, as pybids' does). The query must have passed ``check_filters``.
    """
    if not query:
        return True
    regex = query.get("regex_search") is True
    parsers = _entity_parsers()
    for key, want in query.items():
        if key in ("regex_search", "acq_type"):
            continue
        wants = want if isinstance(want, list) else [want]
        if not wants:
            continue
        have = entities.get(key)
        if have is None:
            if None in wants:
                continue
            return False
        if ANY_VALUE in wants:
            continue
        values = [w for w in wants if w is not None]
        if regex:
            if not any(re.search(str(w), str(have), re.IGNORECASE) for w in values):
                return False
        elif not any(_as_entity(key, w, parsers) == have for w in values):
            return False
    return True


def _as_entity(key: str, value, parsers: dict):
    """A query value in the type the entity is parsed to (pybids' ``_sanitize_query_dtypes``)."""
    if key == "extension" and isinstance(value, str):
        value = "." + value.lstrip(".")
    try:
        return parsers[key][1](value)
    except (TypeError, ValueError):
        return value


def check_filters(filters, path: str | None = None) -> dict:
    """The filter file's content, or a usage error naming what is wrong in it: a top-level key
    other than ``t1w``/``nm``, a query key that is no BIDS entity (with the nearest names), a
    value of the wrong kind, a ``regex_search`` that is not true/false, a bad regular
    expression, an unknown ``acq_type``."""
    import difflib

    from .acquisitions import ACQ_TYPES

    def bad(problem: str):
        raise NmbidsError(f"--bids-filter-file: {problem}", code=EXIT_USAGE, path=path)

    if not isinstance(filters, dict) or set(filters) - set(FILTER_QUERIES):
        bad("the filter file must be a JSON object with keys 't1w' and/or 'nm'")
    parsers = _entity_parsers()
    short = {}  # "acq" -> "acquisition": the BIDS key-value names users may write instead
    for name, (regex, _) in parsers.items():
        m = re.search(r"([a-z]+)-\(", regex.pattern)
        if m and m.group(1) != name:
            short[m.group(1)] = name
    for what, query in filters.items():
        if not isinstance(query, dict):
            bad(f"'{what}' must be an object of entity: value pairs")
        regex = query.get("regex_search", False)
        if not isinstance(regex, bool):
            bad(f"'{what}': regex_search must be true or false, not {regex!r}")
        for key, want in query.items():
            if key == "regex_search":
                continue
            if key == "acq_type":
                if what != "nm":
                    bad(f"'{what}': acq_type applies to 'nm' only")
                if want not in ACQ_TYPES:
                    bad(f"'nm': acq_type must be one of {', '.join(ACQ_TYPES)}, not {want!r}")
                continue
            if key not in parsers:
                near = ([short[key]] if key in short else []) + difflib.get_close_matches(key, list(parsers))
                hint = f"; did you mean {' or '.join(repr(n) for n in dict.fromkeys(near))}?" if near else ""
                bad(f"'{what}': {key!r} is not a BIDS entity{hint} (entities are named as pybids names them: "
                    "subject, session, acquisition, reconstruction, run, suffix, ...)")
            for w in want if isinstance(want, list) else [want]:
                if isinstance(w, bool) or not isinstance(w, (str, int, float, type(None))):
                    bad(f"'{what}': {key} must be a value, a list of values, \"*\" or null, not {w!r}")
                if regex and isinstance(w, str) and w != ANY_VALUE:
                    try:
                        re.compile(w)
                    except re.error as err:
                        bad(f"'{what}': {key}: {w!r} is not a regular expression ({err})")
    return filters


def _pair_and_build(groups: dict, ignored: list) -> list:
    """Turn groups of runs into NMInputs; pair mt-on with its mt-off."""
    inputs, offs = [], {}

    def pair_keys(key):
        # the same entities but mt-; then without acq- too (MPM: acq-MTw mt-on, acq-PDw mt-off)
        same_acq = tuple((k, v) for k, v in key if k != "mt")
        return same_acq, tuple((k, v) for k, v in same_acq if k != "acquisition")

    for key, members in groups.items():
        if members[0][1].get("mt") == "off":
            for pk in pair_keys(key):
                offs.setdefault(pk, []).append(members)
    taken = set()
    for key, members in groups.items():
        f, ents, rel, acq_type, evidence, meta = members[0]
        if acq_type == MTR:
            if ents.get("mt") == "off":
                continue  # consumed as a partner below
            partners = [p for pk in pair_keys(key) for p in offs.get(pk, []) if p[0][0].path not in taken]
            if not partners:
                ignored.append({"path": rel, "reason": "mt-on image without a matching mt-off: "
                                "an MT ratio needs both", "problem": "warning", "nm": True})
                continue
            off = partners[0][0][0].path
            taken.add(off)
            nm = NMInput(rel, [m[0].path for m in members], acq_type, evidence,
                         source_prefix(ents), mt_off=off, metadata=meta)
        else:
            nm = NMInput(rel, [m[0].path for m in members], acq_type, evidence, source_prefix(ents),
                         metadata=meta)
        inputs.append(nm)
    # mt-off images that no mt-on claimed
    unclaimed = {members[0][0].path: members for ms in offs.values() for members in ms
                 if members[0][0].path not in taken}
    for members in unclaimed.values():
        ignored.append({"path": members[0][2], "reason": "mt-off image without a matching mt-on",
                        "problem": "warning", "nm": True})
    # two inputs differing only by suffix (acq-NM_T1w, acq-NM_T2starw) must not write the
    # same derivative names: fold the suffix into the acq label of the later one
    seen: set = set()
    for nm in inputs:
        if nm.prefix in seen:
            nm.prefix = unique_prefix(nm.source, seen)
        seen.add(nm.prefix)
    return inputs


def discover(bids_dir: Path, participants=None, sessions=None, filters: dict | None = None,
             database_dir: Path | None = None) -> dict[str, list[SessionPlan]]:
    """Plan every selected participant: ``{label: [SessionPlan, ...]}``, in label order.

    ``participants`` and ``sessions`` are labels without prefixes (None: all).
    """
    bids_dir = Path(bids_dir)
    layout = load_layout(bids_dir, participants or None, database_dir)
    return {p: plan_participant(layout, bids_dir, p, sessions or None, filters)
            for p in select_participants(layout, participants)}


def select_participants(layout, labels=None) -> list[str]:
    available = sorted(layout.get_subjects())
    if not labels:
        if not available:
            raise NmbidsError("no sub-* folders with anat data found", code=EXIT_NO_INPUT)
        return available
    wanted = [check_label(strip_prefix(lbl, "sub-"), "participant") for lbl in labels]
    missing = [w for w in wanted if w not in available]
    if missing:
        raise NmbidsError(f"participant(s) not found in the dataset: {', '.join('sub-' + m for m in missing)}",
                          code=EXIT_NO_FILES)
    return wanted
