"""Collect the participant-level tables of an nmbids OUTPUT_DIR.

Reads every ``OUTPUT_DIR/sub-*/[ses-*/]anat/*_desc-nm_measures.tsv`` and
``*_desc-nm_qc.tsv`` (contract: ``docs/outputs.md``), joins
``BIDS_DIR/participants.tsv``, and keeps a record of every participant that
had to be left out and why. Nothing here raises because of one participant:
an unreadable table is recorded and skipped.

Reading is built for thousands of participants: the files share one header,
so their bodies are concatenated and parsed by a single ``pandas.read_csv``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..contract.names import MEASURES_TAIL, QC_TAIL
from ..contract.tables import MEASURE_COLUMNS, MEASURE_REQUIRED, QC_COLUMNS, QC_NUMERIC, QC_REQUIRED  # noqa: F401
from ..contract.exits import EXIT_DATA, EXIT_NO_INPUT, EXIT_USAGE, NmbidsError

ROI_ORDER = ["SN", "VTA", "LC", "LC_rostral", "LC_middle", "LC_caudal", "CC", "PT"]
HEMI_ORDER = ["L", "R", "bilateral"]
MEASURE_ORDER = ["cr", "cr_roimean", "cr_threshold", "cnr", "volume_mm3", "coverage",
                 "reference_value", "mtr", "mtr_roimean", "mtr_threshold", "mt_enhancement"]
ACQ_ORDER = ["GREMT", "FSE", "MTR"]
NA = "n/a"
NA_VALUES = ["n/a", "N/A", "NaN", "nan", ""]

CHUNK_ROWS = 100_000  # rows parsed at once when reading many tables



@dataclass
class Collection:
    """Everything the group level reads, after validation."""

    measures: pd.DataFrame  # long form, contract columns (value float), session_id "n/a" when none
    qc: pd.DataFrame  # QC rows of every participant
    participants: pd.DataFrame | None  # participants.tsv, strings, NaN for n/a; None when absent
    participants_sidecar: dict  # participants.json (column descriptions), {} when absent
    sessions: dict[str, list[str]]  # participant -> sessions with a readable measures table
    excluded: dict[str, str] = field(default_factory=dict)  # participant -> reason (no usable data)
    notes: dict[str, list[str]] = field(default_factory=dict)  # participant -> partial problems

    def note(self, participant: str, message: str) -> None:
        self.notes.setdefault(participant, []).append(message)

    @property
    def included(self) -> list[str]:
        return sorted(p for p in self.sessions if p not in self.excluded)


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def strip_labels(labels, prefix: str) -> set[str] | None:
    """``['sub-01', '02']`` -> ``{'01', '02'}``; None/empty -> None (no filter)."""
    if not labels:
        return None
    if isinstance(labels, str):
        labels = labels.split()
    return {str(lab)[len(prefix):] if str(lab).startswith(prefix) else str(lab) for lab in labels}


_NUM_RE = re.compile(r"(\d+)")


def natural_key(label: str) -> tuple:
    """Sort key putting ``ses-2`` before ``ses-10`` (and ``n/a`` first)."""
    if label in (None, NA) or (isinstance(label, float) and np.isnan(label)):
        return (0,)
    parts = _NUM_RE.split(str(label))
    return (1,) + tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def order_index(values, order: list[str]) -> list:
    """Sort key: position in ``order``, then alphabetical for unknown values."""
    pos = {v: i for i, v in enumerate(order)}
    return [(pos.get(v, len(order)), str(v)) for v in values]


# ---------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------

def find_tables(output_dir: Path, suffix: str, subjects: set[str] | None,
                sessions: set[str] | None) -> tuple[dict[str, list[tuple[str, Path]]], list[str]]:
    """Map participant -> [(session_id, path)] for ``suffix``; also list every ``sub-*`` folder."""
    found: dict[str, list[tuple[str, Path]]] = {}
    folders: list[str] = []
    try:
        entries = sorted(os.scandir(output_dir), key=lambda e: e.name)
    except OSError:
        return found, folders
    for entry in entries:
        if not (entry.name.startswith("sub-") and entry.is_dir()):
            continue
        label = entry.name[4:]
        if subjects is not None and label not in subjects:
            continue
        folders.append(entry.name)
        sub_dir = Path(entry.path)
        candidates = [(NA, p) for p in sorted((sub_dir / "anat").glob(f"*{suffix}"))]
        for ses_dir in sorted(sub_dir.glob("ses-*")):
            if sessions is not None and ses_dir.name[4:] not in sessions:
                continue
            candidates += [(ses_dir.name, p) for p in sorted((ses_dir / "anat").glob(f"*{suffix}"))]
        if candidates:
            found[entry.name] = candidates
    return found, folders


# ---------------------------------------------------------------------------
# reading many small TSVs at once
# ---------------------------------------------------------------------------

def _read_csv(text: str, dtype="str") -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), sep="\t", dtype=dtype, keep_default_na=False,
                       na_values=NA_VALUES, quoting=csv.QUOTE_NONE)


def cat_apply(series: pd.Series, func, missing) -> np.ndarray:
    """``func`` applied per distinct value (not per row); ``missing`` for NaN. Object array."""
    cat = series.astype("category")
    table = np.array([func(str(c)) for c in cat.cat.categories] + [missing], dtype=object)
    return table[cat.cat.codes.to_numpy()]  # code -1 (missing) picks the trailing entry


def read_tables(paths: list[Path], columns: list[str], required: list[str]
                ) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Read many TSVs sharing ``columns``; return (rows with ``_file`` index, problems).

    Files whose header is exactly ``columns`` are concatenated and parsed once.
    Others are read one by one, reordered, and must hold the ``required``
    columns. ``problems`` lists ``(file index, reason)`` for files left out.
    Every column comes back as a pandas categorical (raw strings, NaN for n/a):
    hundreds of thousands of rows hold only a few thousand distinct strings,
    so memory stays small.
    """
    header = "\t".join(columns)
    n_tabs = len(columns) - 1
    body: list[str] = []
    owners: list[int] = []
    frames: list[pd.DataFrame] = []
    problems: list[tuple[int, str]] = []

    def flush() -> None:  # parse the rows gathered so far (bounded memory: CHUNK_ROWS at a time)
        df = _read_csv(header + "\n" + "\n".join(body), dtype="category")
        if len(df) != len(owners):  # cannot happen with QUOTE_NONE; be safe anyway
            raise RuntimeError("row count mismatch while reading tables")
        df["_file"] = np.asarray(owners, dtype=np.int64)
        frames.append(df)
        body.clear()
        owners.clear()

    for i, path in enumerate(paths):
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((i, f"unreadable {Path(path).name}: {exc}"))
            continue
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            problems.append((i, f"empty table {Path(path).name}"))
            continue
        if lines[0] == header:
            rows = lines[1:]
            if any(ln.count("\t") != n_tabs for ln in rows):
                problems.append((i, f"malformed rows in {Path(path).name} (wrong number of columns)"))
                continue
            body.extend(rows)
            owners.extend([i] * len(rows))
            if len(body) >= CHUNK_ROWS:
                flush()
            continue
        try:
            df = _read_csv("\n".join(lines))
        except Exception as exc:  # pandas raises several parser error types
            problems.append((i, f"unparsable {Path(path).name}: {str(exc).splitlines()[0]}"))
            continue
        lacking = [c for c in required if c not in df.columns]
        if lacking:
            problems.append((i, f"{Path(path).name} lacks column(s) {', '.join(lacking)}"))
            continue
        df = df.reindex(columns=columns)
        df["_file"] = i
        frames.append(df)
    if body:
        flush()
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype="category") for c in columns})
        return empty.assign(_file=pd.Series(dtype=np.int64)), problems
    return _concat_categorical(frames, columns), problems


def _concat_categorical(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """Row-bind frames keeping every column categorical (pd.concat would fall back to objects)."""
    from pandas.api.types import union_categoricals

    if len(frames) == 1:
        out = frames[0]
    else:
        data = {}
        for c in columns:
            parts = [f[c].astype(object).astype("category") if not isinstance(f[c].dtype, pd.CategoricalDtype)
                     else f[c] for f in frames]
            try:
                data[c] = pd.Series(union_categoricals(parts, ignore_order=True))
            except TypeError:  # categories of different dtypes (e.g. an all-n/a column)
                data[c] = pd.concat([p.astype(object) for p in parts], ignore_index=True).astype("category")
        data["_file"] = np.concatenate([f["_file"].to_numpy(dtype=np.int64) for f in frames])
        out = pd.DataFrame(data)
    for c in columns:
        if not isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype("category")
    return out


# ---------------------------------------------------------------------------
# participants.tsv
# ---------------------------------------------------------------------------

def read_participants(bids_dir: Path) -> tuple[pd.DataFrame | None, dict]:
    """Read ``participants.tsv`` as strings (NaN for n/a) and its JSON sidecar."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return None, {}
    try:
        df = _read_csv(path.read_text(encoding="utf-8-sig"))
    except Exception as exc:
        raise NmbidsError(f"cannot read {path}: {str(exc).splitlines()[0]}", EXIT_DATA) from exc
    df.columns = [str(c).strip() for c in df.columns]
    if "participant_id" not in df.columns:
        raise NmbidsError(f"{path} has no participant_id column", EXIT_DATA)
    pid = df["participant_id"].astype(str).str.strip()
    df["participant_id"] = np.where(pid.str.startswith("sub-"), pid, "sub-" + pid)
    dup = df["participant_id"][df["participant_id"].duplicated()].unique().tolist()
    if dup:
        raise NmbidsError(f"{path} lists participant_id more than once: {', '.join(dup[:5])}", EXIT_DATA)
    sidecar: dict = {}
    js = path.with_suffix(".json")
    if js.is_file():
        try:
            sidecar = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            sidecar = {}
    return df.reset_index(drop=True), sidecar


def _fill_category(series: pd.Series, fill: str) -> pd.Series:
    s = series.astype("category")
    if s.isna().any():
        if fill not in s.cat.categories:
            s = s.cat.add_categories([fill])
        s = s.fillna(fill)
    return s


def numeric_or_none(series: pd.Series) -> pd.Series | None:
    """The series as floats when every non-missing value is a number, else None."""
    s = series.dropna()
    num = pd.to_numeric(s, errors="coerce")
    if len(s) and num.notna().all():
        return pd.to_numeric(series, errors="coerce").astype(float)
    return None


# ---------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------

EXCLUDE_COLUMNS = ["participant_id", "session_id", "source", "reason"]


def read_exclusions(path: Path) -> pd.DataFrame:
    """The ``--exclude`` TSV: participant_id (required), session_id and source (n/a or empty:
    every session / every NM image), reason. Labels may omit ``sub-``/``ses-``. A row of
    group_qc.tsv with a reason column added is a valid row."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise NmbidsError(f"--exclude {path}: cannot read the table ({err})", EXIT_USAGE) from None
    if "participant_id" not in table.columns:
        raise NmbidsError(f"--exclude {path}: no participant_id column (columns: "
                         f"{', '.join(EXCLUDE_COLUMNS)})", EXIT_USAGE)
    for col in EXCLUDE_COLUMNS:
        if col not in table.columns:
            table[col] = NA
    table = table[EXCLUDE_COLUMNS].apply(lambda c: c.str.strip()).replace("", NA)
    table["participant_id"] = [p if p.startswith("sub-") else f"sub-{p}" for p in table["participant_id"]]
    table["session_id"] = [s if s == NA or s.startswith("ses-") else f"ses-{s}" for s in table["session_id"]]
    table["reason"] = table["reason"].replace(NA, "no reason given")
    return table


def _exclusion_hits(df: pd.DataFrame, row) -> np.ndarray:
    sel = df["participant_id"].astype(str) == row.participant_id
    if row.session_id != NA:
        sel &= df["session_id"].astype(str) == row.session_id
    if row.source != NA:
        sel &= df["source"].astype(str) == row.source
    return sel.to_numpy()


def _drop_excluded(df: pd.DataFrame, exclusions: pd.DataFrame | None) -> tuple[pd.DataFrame, list]:
    """``df`` without the rows of ``exclusions``; and the exclusion rows that matched."""
    if exclusions is None or not len(df):
        return df, []
    gone = np.zeros(len(df), dtype=bool)
    matched = []
    for row in exclusions.itertuples(index=False):
        hit = _exclusion_hits(df, row)
        if hit.any():
            matched.append(row)
        gone |= hit
    return df[~gone].reset_index(drop=True), matched


def _record_exclusions(coll: "Collection", matched: list, exclusions: pd.DataFrame, log) -> None:
    """A participant left with nothing is excluded with the reason; a partial exclusion is a
    note. Both reach group_participants.tsv (its reason column) and the group report."""
    for row in exclusions.itertuples(index=False):
        what = " ".join(x for x in (row.session_id, row.source) if x != NA) or "all data"
        if row not in matched:
            log.warning("--exclude: %s %s matches no measures in OUTPUT_DIR", row.participant_id, what)
            continue
        line = f"excluded with --exclude ({what}): {row.reason}"
        left = (coll.measures["participant_id"].astype(str) == row.participant_id).any()
        if left:
            coll.note(row.participant_id, line)
        else:
            coll.sessions.setdefault(row.participant_id, [])
            previous = coll.excluded.get(row.participant_id, "")
            coll.excluded[row.participant_id] = line if not previous.startswith("excluded with") \
                else f"{previous}; {line}"
        log.info("%s %s left out (--exclude): %s", row.participant_id, what, row.reason)


def collect(bids_dir: Path, output_dir: Path, participant_label=None, session_label=None,
            logger: logging.Logger | None = None, exclusions: pd.DataFrame | None = None) -> Collection:
    """Read every measures and QC table and participants.tsv.

    ``exclusions`` (``read_exclusions``): rows left out, with their reasons recorded.
    Raises :class:`NmbidsError` (exit 66) when no readable measures table exists.
    """
    log = logger or logging.getLogger("nmbids")
    subjects = strip_labels(participant_label, "sub-")
    sessions = strip_labels(session_label, "ses-")
    participants, sidecar = read_participants(bids_dir)

    found, folders = find_tables(Path(output_dir), MEASURES_TAIL, subjects, sessions)
    owners = [(sub, ses, path) for sub, items in found.items() for ses, path in items]
    measures, problems = read_tables([p for _, _, p in owners], MEASURE_COLUMNS, MEASURE_REQUIRED)

    coll = Collection(measures=measures, qc=pd.DataFrame(columns=QC_COLUMNS), participants=participants,
                      participants_sidecar=sidecar, sessions={})
    bad_files = set()
    for i, reason in problems:
        coll.note(owners[i][0], reason)
        bad_files.add(i)

    # The folder a table lives in decides whose table it is; a table that says otherwise is refused.
    if len(measures):
        file_sub = np.array([o[0] for o in owners], dtype=object)[measures["_file"].to_numpy()]
        file_ses = np.array([o[1] for o in owners], dtype=object)[measures["_file"].to_numpy()]
        pid = cat_apply(measures["participant_id"], lambda v: v if v.startswith("sub-") else "sub-" + v, "")
        ses = cat_apply(measures["session_id"], str, NA)
        ses_ok = (ses == file_ses) | (ses == NA)
        wrong = (pid != file_sub) | ~ses_ok
        for i in np.unique(measures["_file"].to_numpy()[wrong]):
            sub, ses_label, path = owners[i]
            coll.note(sub, f"{path.name}: participant_id/session_id in the table do not match its folder")
            bad_files.add(int(i))
        measures["participant_id"] = pd.Categorical(file_sub)
        measures["session_id"] = pd.Categorical(file_ses)
    if bad_files:
        measures = measures[~measures["_file"].isin(sorted(bad_files))]
    # value: parse each distinct string once
    raw = measures["value"].astype("category")
    num = pd.to_numeric(pd.Series(raw.cat.categories.astype(str)), errors="coerce").to_numpy(dtype=float)
    codes = raw.cat.codes.to_numpy()
    value = np.where(codes >= 0, num[codes] if len(num) else np.nan, np.nan)
    n_bad = int(((codes >= 0) & np.isnan(value)).sum())
    if n_bad:
        log.warning("%d measure value(s) are not numbers; read as n/a", n_bad)
    measures = measures.assign(value=value)
    for col in ("acq_type", "roi", "hemi", "measure"):
        measures[col] = _fill_category(measures[col], NA)
    measures = measures.drop(columns="_file").reset_index(drop=True)
    measures, matched = _drop_excluded(measures, exclusions)
    coll.measures = measures

    # sessions per participant, and who has nothing usable
    finite = measures[np.isfinite(measures["value"].to_numpy())]
    has_values = set(finite["participant_id"].unique())
    for sub, ses in measures[["participant_id", "session_id"]].drop_duplicates().itertuples(index=False):
        coll.sessions.setdefault(sub, []).append(ses)
    for sub in coll.sessions:
        coll.sessions[sub] = sorted(coll.sessions[sub], key=natural_key)
    for sub in folders:
        if sub not in coll.sessions:
            coll.sessions[sub] = []
            why = "; ".join(coll.notes.get(sub, [])) or "no measures table (participant level failed or not run)"
            coll.excluded[sub] = why
        elif sub not in has_values:
            coll.excluded[sub] = "no finite measure value in its measures table(s)"
    if exclusions is not None:
        _record_exclusions(coll, matched, exclusions, log)
    if participants is not None:
        listed = participants["participant_id"].tolist()
        if subjects is not None:
            listed = [p for p in listed if p[4:] in subjects]
        for sub in listed:
            if sub not in coll.sessions:
                coll.sessions[sub] = []
                coll.excluded[sub] = "listed in participants.tsv but no outputs in OUTPUT_DIR"
    if subjects is not None:
        for label in sorted(subjects):
            sub = f"sub-{label}"
            if sub not in coll.sessions:
                coll.sessions[sub] = []
                coll.excluded[sub] = "requested with --participant-label but not found"
    if not len(measures) or not coll.included:
        raise NmbidsError(f"no readable measures table (*{MEASURES_TAIL}) with data found in {output_dir}",
                         EXIT_NO_INPUT)
    if participants is not None:
        unknown = sorted(set(coll.included) - set(participants["participant_id"]))
        if unknown:
            log.warning("%d participant(s) with outputs are not in participants.tsv: %s", len(unknown),
                        ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else ""))
            for sub in unknown:
                coll.note(sub, "not listed in participants.tsv")

    # QC tables: problems are noted, never fatal
    qc_found, _ = find_tables(Path(output_dir), QC_TAIL, subjects, sessions)
    qc_owners = [(sub, ses, path) for sub, items in qc_found.items() for ses, path in items]
    qc, qc_problems = read_tables([p for _, _, p in qc_owners], QC_COLUMNS, QC_REQUIRED)
    for i, reason in qc_problems:
        coll.note(qc_owners[i][0], f"QC: {reason}")
    qc = qc.astype({c: object for c in QC_COLUMNS})  # one row per source: plain strings are fine
    if len(qc):
        idx = qc["_file"].to_numpy()
        qc["participant_id"] = np.array([o[0] for o in qc_owners], dtype=object)[idx]
        qc["session_id"] = np.array([o[1] for o in qc_owners], dtype=object)[idx]
    for col in QC_NUMERIC:
        qc[col] = pd.to_numeric(qc[col], errors="coerce").astype(float)
    qc = qc.drop(columns="_file").reset_index(drop=True)
    qc, _ = _drop_excluded(qc, exclusions)
    for sub in coll.included:
        if sub not in qc_found:
            coll.note(sub, "no QC table")
    coll.qc = qc
    for sub, reason in sorted(coll.excluded.items()):
        log.warning("skipping %s: %s", sub, reason)
    return coll


# ---------------------------------------------------------------------------
# derived tables
# ---------------------------------------------------------------------------

def participant_columns(coll: Collection, taken: list[str]) -> pd.DataFrame | None:
    """participants.tsv without columns whose names are already ``taken``."""
    if coll.participants is None:
        return None
    keep = ["participant_id"] + [c for c in coll.participants.columns
                                 if c != "participant_id" and c not in taken]
    return coll.participants[keep]


def long_table(coll: Collection) -> pd.DataFrame:
    """``group_measures.tsv``: every measure row, participants.tsv columns joined."""
    df = coll.measures
    parts = participant_columns(coll, MEASURE_COLUMNS)
    if parts is not None:
        # categorical: one copy of each participant's values, not one per measure row
        parts = parts.astype({c: "category" for c in parts.columns if c != "participant_id"})
        df = df.merge(parts, on="participant_id", how="left")
    return df.iloc[_order(df)].reset_index(drop=True)


def session_rank(sessions: pd.Series) -> np.ndarray:
    """Natural-order rank of each session label (computed once per distinct label)."""
    labels = sorted(pd.unique(sessions.astype(str)), key=natural_key)
    return sessions.astype(str).map({s: i for i, s in enumerate(labels)}).to_numpy(dtype=np.int64)


def _order(df: pd.DataFrame) -> np.ndarray:
    """Row order by participant, then session (natural order), then original position."""
    key = pd.DataFrame({"p": df["participant_id"].astype(str).to_numpy(), "s": session_rank(df["session_id"]),
                        "i": np.arange(len(df))})
    return key.sort_values(["p", "s", "i"], kind="stable")["i"].to_numpy()


SOURCE_KEYS = ["participant_id", "session_id", "source"]  # one NM image: a row of the QC table


def qc_by_source(qc: pd.DataFrame, columns) -> pd.DataFrame:
    """The QC ``columns`` indexed by ``SOURCE_KEYS`` (as strings), one row per NM image."""
    return qc[SOURCE_KEYS + list(columns)].astype({c: str for c in SOURCE_KEYS}).drop_duplicates(
        SOURCE_KEYS).set_index(SOURCE_KEYS)


@dataclass
class Wide:
    """One row per participant and session, one column per roi x hemi x measure."""

    table: pd.DataFrame  # participant_id, session_id, acq_type, outcome columns
    outcomes: list[tuple[str, str, str, str]]  # (column, roi, hemi, measure)
    acq_types: dict[str, list[str]]  # outcome column -> acquisition types used across participants
    # QC column -> a table shaped like ``table``: each value is that QC column averaged over the
    # NM images (sources) whose values the same cell of ``table`` averages
    image_qc: dict[str, pd.DataFrame] = field(default_factory=dict)


def wide_table(measures: pd.DataFrame, logger: logging.Logger | None = None, qc: pd.DataFrame | None = None,
               image_qc: tuple[str, ...] = ()) -> Wide:
    """Pivot the long measures to one row per participant x session.

    When several sources give a value for the same participant, session, roi,
    hemi and measure, values of the *preferred* acquisition type are used and
    averaged (runs). The preferred type of an roi x hemi x measure is the one
    measured in the most participants (ties: GREMT, FSE, MTR, then
    alphabetical); a participant lacking it contributes its next-ranked type.

    ``image_qc``: numeric QC columns (of ``qc``, one row per source) carried along: each
    cell gets the mean QC value of the sources its value was averaged over (``Wide.image_qc``),
    so that a QC covariate describes the very images an outcome comes from.
    """
    log = logger or logging.getLogger("nmbids")
    keys = ["participant_id", "session_id"]
    cell = ["roi", "hemi", "measure"]
    allrows = measures[keys].astype(str).drop_duplicates()
    image_qc = tuple(image_qc)
    m = measures.loc[np.isfinite(measures["value"].to_numpy()),
                     keys + (["source"] if image_qc else []) + ["acq_type"] + cell + ["value"]]
    if image_qc:
        m = m.assign(**{c: m[c].astype(str) for c in SOURCE_KEYS}).merge(
            qc_by_source(qc, image_qc).reset_index(), on=SOURCE_KEYS, how="left")
    if not len(m):
        return Wide(allrows.assign(acq_type=NA).reset_index(drop=True), [], {})
    # rank the acquisition types of each cell by the number of participants they cover
    grouped = m.groupby(cell + ["acq_type"], sort=False, observed=True)
    gid = grouped.ngroup().to_numpy()
    pcodes = m["participant_id"].astype("category").cat.codes.to_numpy()
    n_part = pd.DataFrame({"g": gid, "p": pcodes}).drop_duplicates().groupby("g").size()
    groups = m[cell + ["acq_type"]].assign(g=gid).drop_duplicates("g").set_index("g").sort_index().astype(str)
    groups["n"] = n_part.reindex(groups.index).to_numpy()
    groups["order"] = [k[0] for k in order_index(groups["acq_type"], ACQ_ORDER)]
    groups = groups.sort_values(cell + ["n", "order", "acq_type"], ascending=[True] * 3 + [False, True, True])
    groups["rank"] = groups.groupby(cell, sort=False).cumcount()
    rank = np.empty(int(gid.max()) + 1, dtype=np.int64)
    rank[groups.index.to_numpy()] = groups["rank"].to_numpy()
    m = m.assign(rank=rank[gid])
    best = m.groupby(keys + cell, sort=False, observed=True)["rank"].transform("min")
    m = m[m["rank"].to_numpy() == best.to_numpy()]

    means = m.groupby(keys + cell, sort=False, observed=True)[["value", *image_qc]].mean()
    values = means["value"].unstack(cell)
    values = values.loc[:, values.notna().any()]
    names = ["_".join(map(str, c)) for c in values.columns]
    cells = pd.DataFrame([tuple(map(str, c)) for c in values.columns], columns=cell)
    cells.insert(0, "column", names)
    cells["k"] = list(zip(order_index(cells["roi"], ROI_ORDER), order_index(cells["hemi"], HEMI_ORDER),
                          order_index(cells["measure"], MEASURE_ORDER)))
    cells = cells.sort_values("k")
    outcomes = list(cells[["column"] + cell].itertuples(index=False, name=None))
    values.columns = names
    table = values.reset_index()
    table[keys] = table[keys].astype(str)

    acq_used = m.groupby(cell, observed=True)["acq_type"].unique()
    acq_types = {"_".join(map(str, k)): sorted(map(str, v)) for k, v in acq_used.items()}
    acq_types = {c: acq_types[c] for c, *_ in outcomes}
    mixed = [c for c, a in acq_types.items() if len(a) > 1]
    if mixed:
        log.warning("values of %d outcome(s) come from more than one acquisition type across participants "
                    "(e.g. %s: %s); absolute values are not comparable across protocols, consider --harmonize",
                    len(mixed), mixed[0], ", ".join(acq_types[mixed[0]]))
    row_acq = m.groupby(keys, sort=False, observed=True)["acq_type"].unique().map(
        lambda a: ";".join(sorted(map(str, a)))).rename("acq_type").reset_index()
    row_acq[keys] = row_acq[keys].astype(str)
    table = table.merge(row_acq, on=keys, how="left")
    # participant-sessions with only n/a values still get a row
    table = allrows.merge(table, on=keys, how="left")
    table["acq_type"] = table["acq_type"].fillna(NA)
    table = table[keys + ["acq_type"] + [c for c, *_ in outcomes]]
    order = _order(table)
    table = table.iloc[order].reset_index(drop=True)
    carried = {}
    for name in image_qc:
        per_cell = means[name].unstack(cell)
        per_cell.columns = ["_".join(map(str, c)) for c in per_cell.columns]
        per_cell = per_cell.reindex(columns=names).reset_index()
        per_cell[keys] = per_cell[keys].astype(str)
        per_cell = table[keys].merge(per_cell, on=keys, how="left")
        carried[name] = per_cell[keys + [c for c, *_ in outcomes]]
    return Wide(table, outcomes, acq_types, carried)


def cross_sectional(wide: Wide) -> pd.DataFrame:
    """One row per participant: each outcome from the earliest session that has it."""
    t = wide.table
    cols = [c for c, *_ in wide.outcomes]
    first = t.groupby("participant_id", sort=True)[cols].first() if cols else \
        pd.DataFrame(index=pd.Index(sorted(t["participant_id"].unique()), name="participant_id"))
    sessions = t.groupby("participant_id", sort=True)["session_id"].agg(lambda s: ";".join(s))
    first.insert(0, "sessions", sessions)
    return first.reset_index()


def cross_sectional_image_qc(wide: Wide) -> dict[str, pd.DataFrame]:
    """``Wide.image_qc`` the way :func:`cross_sectional` takes the outcomes: one row per
    participant, each outcome's QC value from the session its value came from."""
    t = wide.table
    out = {}
    pids = sorted(t["participant_id"].unique())
    for name, per_cell in wide.image_qc.items():
        columns = {"participant_id": pids}
        for c, *_ in wide.outcomes:
            # the table is in session order: a participant's first row with a value is its earliest
            first = t.loc[t[c].notna().to_numpy(), "participant_id"].drop_duplicates()
            columns[c] = pd.Series(per_cell.loc[first.index, c].to_numpy(),
                                   index=first.to_numpy()).reindex(pids).to_numpy()
        out[name] = pd.DataFrame(columns)
    return out
