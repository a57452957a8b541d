"""Discovery: from a BIDS dataset to a plain, printable plan of what to process.

pybids indexes with validation off (it silently drops files with invented suffixes, and
NM images have no BIDS suffix of their own), and only the ``anat`` folders of the selected
subjects are indexed (indexing whole datasets is slow and its database must never be shared
between cluster jobs, so it lives in memory unless ``--bids-database-dir`` is given).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .acquisitions import MTR, classify, looks_like_nm
from .errors import EXIT_NO_FILES, EXIT_NO_INPUT, NmbidsError

NM_SUFFIXES = {"T1w", "T2w", "T2starw", "MEGRE", "MTR", "MTS", "MPM", "PDw", "FLASH", "NM"}
# entities that name a derivative (run is dropped: runs are repeats averaged together)
_PREFIX_ENTITIES = (("subject", "sub"), ("session", "ses"), ("acquisition", "acq"),
                    ("ceagent", "ce"), ("reconstruction", "rec"), ("direction", "dir"),
                    ("echo", "echo"), ("flip", "flip"), ("inversion", "inv"), ("part", "part"))


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
    ignored: list[dict]

    @property
    def session_id(self) -> str:
        return f"ses-{self.session}" if self.session else "n/a"

    @property
    def prefix(self) -> str:
        return f"sub-{self.participant}" + (f"_ses-{self.session}" if self.session else "")

    def to_dict(self) -> dict:
        return asdict(self)


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


def load_layout(bids_dir: Path, participants=None, database_dir: Path | None = None):
    """A pybids layout of the ``anat`` folders only, with validation off."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    ignore = [re.compile(r"^/(code|derivatives|sourcedata|stimuli|models)/"),
              re.compile(r"/(func|dwi|fmap|perf|beh|eeg|meg|ieeg|pet|micr|nirs|motion)/"),
              re.compile(r"(^|/)\.")]
    if participants:
        keep = "|".join(re.escape(p) for p in participants)
        ignore.append(re.compile(rf"^/sub-(?!({keep})(/|$))[^/]+"))
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)
    kwargs = {"database_path": str(database_dir)} if database_dir else {}
    return BIDSLayout(str(bids_dir), validate=False, indexer=indexer, **kwargs)


def _read_sidecar(bids_file, bids_dir: Path) -> tuple[dict, str | None]:
    """Sidecar metadata with BIDS inheritance, read ourselves so that a broken JSON is
    reported for that file instead of breaking the whole index (pybids raises on it).

    Applicable sidecars: in the file's folder and every parent up to the root, JSON files
    with the same suffix whose entities are a subset of the file's; nearer ones win.
    """
    path = Path(bids_file.path)
    name = path.name.split(".")[0]
    parts = name.split("_")
    suffix, pairs = parts[-1], set(parts[:-1])
    folders = [path.parent] + [p for p in path.parents if Path(bids_dir) in p.parents or p == Path(bids_dir)]
    meta: dict = {}
    for folder in reversed(list(dict.fromkeys(folders))):  # root first, nearest last
        for cand in sorted(folder.glob(f"*{suffix}.json")):
            cparts = cand.name[:-5].split("_")
            if cparts[-1] != suffix or not set(cparts[:-1]) <= pairs:
                continue
            try:
                meta.update(json.loads(cand.read_text()))
            except (ValueError, UnicodeDecodeError, OSError) as err:
                return meta, f"sidecar {cand.name} is not valid JSON ({err.__class__.__name__})"
    return meta, None


def _prefix(entities: dict) -> str:
    ents = dict(entities)
    # an image without acq- (e.g. sub-01_mt-on_MTR) is named after its suffix, so that its
    # derivatives never look like the session's own files (sub-01_desc-...)
    if "acquisition" not in ents and ents.get("suffix"):
        ents["acquisition"] = re.sub(r"[^A-Za-z0-9]", "", ents["suffix"])
    return "_".join(f"{short}-{ents[long]}" for long, short in _PREFIX_ENTITIES if long in ents)


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
        query = {"subject": participant, "datatype": "anat", "extension": [".nii", ".nii.gz"]}
        if ses:
            query["session"] = ses
        files = layout.get(**query)
        t1w_cands, nm_groups, ignored = [], {}, []
        forced = filters.get("nm", {}).get("acq_type")
        valid_name = re.compile(_BIDS_ANAT.format(p=re.escape(participant)))
        names = {Path(f.path).name for f in files}
        for f in sorted(files, key=lambda f: f.path):
            ents = dict(f.get_entities())
            rel = Path(f.path).relative_to(bids_dir).as_posix()
            if not valid_name.fullmatch(rel):
                ignored.append({"path": rel, "reason": "not a valid BIDS file name (labels are letters "
                                "and digits only)", "problem": "warning"})
                continue
            if rel.endswith(".nii") and Path(f.path).name + ".gz" in names:
                ignored.append({"path": rel, "reason": f"duplicate of {Path(f.path).name}.gz, which is used"})
                continue
            meta, meta_err = _read_sidecar(f, bids_dir)
            suffix = ents.get("suffix")
            if meta_err:
                ignored.append({"path": rel, "reason": meta_err, "problem": "error"})
                continue
            if looks_like_nm(ents, meta) and suffix in NM_SUFFIXES:
                if not _matches(ents, filters.get("nm")):
                    ignored.append({"path": rel, "reason": "excluded by --bids-filter-file (nm)"})
                    continue
                acq_type, evidence = classify(ents, meta)
                if forced:
                    acq_type, evidence = forced, evidence + ["acq_type set by --bids-filter-file"]
                if acq_type is None:
                    ignored.append({"path": rel, "reason": "NM-like image of unknown acquisition type; "
                                    "tell nmbids what it is with --bids-filter-file "
                                    "{\"nm\": {\"acq_type\": \"GREMT\"}} (or \"FSE\")", "problem": "warning"})
                    continue
                # runs of the same acquisition are repeats to realign and average
                key = tuple(sorted((k, str(v)) for k, v in ents.items()
                                   if k not in ("run", "extension")))
                nm_groups.setdefault(key, []).append((f, ents, rel, acq_type, evidence, meta))
            elif suffix == "T1w":
                if _matches(ents, filters.get("t1w")):
                    t1w_cands.append((f, ents, rel))
                else:
                    ignored.append({"path": rel, "reason": "excluded by --bids-filter-file (t1w)"})
            else:
                ignored.append({"path": rel, "reason": f"not used by nmbids (suffix {suffix})"})
        nm_inputs = _pair_and_build(nm_groups, ignored)
        t1w, note = None, None
        if t1w_cands:
            # prefer a plain T1w (no acq-), then the first run
            t1w_cands.sort(key=lambda c: ("acquisition" in c[1], c[1].get("run", 0) or 0, c[2]))
            t1w = t1w_cands[0][0].path
            for c in t1w_cands[1:]:
                ignored.append({"path": c[2], "reason": f"another T1w was used ({t1w_cands[0][2]})"})
            subject_t1w.append((ses, t1w))
        plans.append(SessionPlan(participant, ses, t1w, note, nm_inputs, ignored))
    # A session without its own T1w borrows the subject's nearest one (in session order).
    order = [p.session for p in plans]
    for plan in plans:
        if plan.t1w is None and subject_t1w and plan.nm:
            ses, path = min(subject_t1w, key=lambda sp: abs(order.index(sp[0]) - order.index(plan.session))
                            if sp[0] in order else 0)
            plan.t1w = path
            plan.t1w_note = f"no T1w in this session: used the T1w of ses-{ses}"
    return plans


def _matches(entities: dict, query: dict | None) -> bool:
    if not query:
        return True
    for key, want in query.items():
        if key == "acq_type":
            continue
        have = entities.get(key)
        wants = want if isinstance(want, list) else [want]
        if want is None and have is not None:
            return False
        if want is not None and str(have) not in [str(w) for w in wants]:
            return False
    return True


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
                                "an MT ratio needs both", "problem": "warning"})
                continue
            off = partners[0][0][0].path
            taken.add(off)
            nm = NMInput(rel, [m[0].path for m in members], acq_type, evidence,
                         _prefix(ents), mt_off=off, metadata=meta)
        else:
            nm = NMInput(rel, [m[0].path for m in members], acq_type, evidence, _prefix(ents),
                         metadata=meta)
        inputs.append(nm)
    # mt-off images that no mt-on claimed
    unclaimed = {members[0][0].path: members for ms in offs.values() for members in ms
                 if members[0][0].path not in taken}
    for members in unclaimed.values():
        ignored.append({"path": members[0][2], "reason": "mt-off image without a matching mt-on",
                        "problem": "warning"})
    # two inputs differing only by suffix (acq-NM_T1w, acq-NM_T2starw) must not write the
    # same derivative names: fold the suffix into the acq label of the later one
    seen = set()
    for nm in inputs:
        if nm.prefix in seen:
            suffix = Path(nm.source).name.split("_")[-1].split(".")[0]
            if "_acq-" in nm.prefix:
                nm.prefix = re.sub(r"_acq-([A-Za-z0-9]+)", rf"_acq-\g<1>{suffix}", nm.prefix, count=1)
            else:
                nm.prefix = nm.prefix.replace("_", f"_acq-{suffix}_", 1) if "_" in nm.prefix \
                    else f"{nm.prefix}_acq-{suffix}"
        seen.add(nm.prefix)
    return inputs


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
