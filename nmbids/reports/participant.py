"""The participant report: ``OUTPUT_DIR/sub-<label>.html`` with figures in
``OUTPUT_DIR/sub-<label>/figures/``.

The report renders files the pipeline already wrote (see docs/outputs.md) and never
recomputes a measure: figures are drawn from the derivative images, tables are shown
as written, warnings compare written values with the thresholds of
:mod:`nmbids.reports.warnings`. A missing or unreadable derivative never makes it
raise: the section that needed it says what is missing instead.
"""
from __future__ import annotations

import logging
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jinja2

from .. import __version__
from ..contract import names
from ..outputs import atomic_write_text
from . import warnings as qcw
from .citation import methods_boilerplate, write_citation
from .utils import (NA, FigureUnavailable, Label, Table, belongs_to_prefix, read_json,
                    read_tsv, safe_name)

__all__ = ["generate_participant_report", "write_citation"]

LOG = logging.getLogger("nmbids.reports")
TEMPLATES_DIR = Path(__file__).parent / "templates"
#: Crash files longer than this are shown truncated (their end, where the traceback is).
CRASH_MAX_CHARS = 20000
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


# --------------------------------------------------------------------------- view model
@dataclass
class Figure:
    title: str
    caption: str
    anchor: str
    src: str | None = None  # relative to OUTPUT_DIR, i.e. to the HTML file
    missing: list[str] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    light: bool = False  # drawn on white (plots), not on black (brain images)
    flicker: bool = False  # two frames: ``before_src`` shown alternately over ``src`` (CSS only)
    before_src: str | None = None


@dataclass
class TableView:
    """A table exactly as written, with the cells that crossed a threshold marked."""

    path: str  # relative to OUTPUT_DIR
    header: list[str]
    rows: list[list[str]]
    marks: list[set[int]]
    dictionary: list[tuple[str, str]]


@dataclass
class SourceView:
    source: str
    prefix: str
    anchor: str
    acq_type: str = NA
    evidence: list[str] = field(default_factory=list)
    n_repeats: str = NA
    status: str = NA
    error: str | None = None
    coverage: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)  # slab, registration, ROIs, CR map, histogram
    specific: list[Figure] = field(default_factory=list)  # LC profile, motion, other maps
    specific_note: str | None = None
    failed_note: str | None = None  # a failed source without any derivative: one line, no panels


@dataclass
class SessionView:
    session_id: str
    title: str
    anchor: str
    anat_dir: str
    t1w: str | None = None
    t1w_note: str | None = None
    ignored: list[dict[str, str]] = field(default_factory=list)
    template_figure: Figure | None = None
    template_flicker: Figure | None = None
    sources: list[SourceView] = field(default_factory=list)
    measures: TableView | None = None
    measures_missing: str | None = None
    qc: TableView | None = None
    qc_missing: str | None = None
    warnings: list[qcw.QCWarning] = field(default_factory=list)
    flags: list[dict[str, str]] = field(default_factory=list)  # the QC table's flags column


# --------------------------------------------------------------------------- helpers
def _s(value: Any, default: str = NA) -> str:
    """A metadata value as a display string (escaping is jinja2's job)."""
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _latest_run_dir(sub_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest ``log/<run-id>`` (by name) that holds a summary.json, else the newest one."""
    log_dir = sub_dir / names.PARTICIPANT_LOG_DIR
    notes: list[str] = []
    runs = sorted((p for p in log_dir.iterdir() if p.is_dir()), key=lambda p: p.name) if log_dir.is_dir() else []
    if not runs:
        return None, notes
    with_summary = [p for p in runs if (p / names.SUMMARY).is_file()]
    chosen = with_summary[-1] if with_summary else runs[-1]
    newer = [p.name for p in runs if p.name > chosen.name]
    if newer:
        notes.append(f"newer run folder(s) without summary.json: {', '.join(newer)}")
    return chosen, notes


def _session_dirs(sub_dir: Path, session_id: str) -> tuple[str, Path]:
    """(S prefix, anat dir) for a session id (``ses-x`` or ``n/a``)."""
    sub = sub_dir.name
    if session_id and session_id != NA:
        ses = session_id if session_id.startswith("ses-") else f"ses-{session_id}"
        ses = safe_name(ses)
        return f"{sub}_{ses}", sub_dir / ses / "anat"
    return sub, sub_dir / "anat"


def _read_table(path: Path, root: Path, mark: Callable[[dict[str, str]], set[str]] | None) -> TableView:
    table: Table = read_tsv(path)
    marks: list[set[int]] = []
    for rec in table.records():
        cols = mark(rec) if mark else set()
        marks.append({i for i, h in enumerate(table.header) if h in cols})
    return TableView(_rel(path, root), table.header, table.rows, marks, _dictionary(table.dictionary))


def _dictionary(d: dict[str, Any]) -> list[tuple[str, str]]:
    """BIDS data dictionary entries as (key, text) pairs for display."""
    out = []
    for key, entry in d.items():
        if isinstance(entry, dict):
            parts = [_s(entry.get(k), "") for k in ("LongName", "Description") if entry.get(k)]
            if entry.get("Units"):
                parts.append(f"Units: {_s(entry['Units'])}")
            levels = entry.get("Levels")
            if isinstance(levels, dict) and levels:
                parts.append("Levels: " + "; ".join(f"{k}: {_s(v)}" for k, v in levels.items()))
            rest = {k: v for k, v in entry.items() if k not in ("LongName", "Description", "Units", "Levels")}
            parts += [f"{k}: {_s(v)}" for k, v in rest.items()]
            out.append((_s(key), " — ".join(parts)))
        else:
            out.append((_s(key), _s(entry)))
    return out


def _qc_marks(rec: dict[str, str]) -> set[str]:
    return {w.what for w in qcw.qc_row_warnings(rec)}


def _measures_marks(rec: dict[str, str]) -> set[str]:
    return {"value"} if qcw.measures_row_warnings(rec) else set()


def _labels(output_dir: Path, space: str | None) -> tuple[dict, str | None]:
    """Atlas label table -> {index: Label}; a note when it is missing or unreadable."""
    atlas = output_dir / names.ATLAS_DIR
    candidates = [names.atlas_paths(output_dir, space)[1]] if space else []
    candidates += sorted(atlas.glob(names.atlas_paths(output_dir, "*")[1].name)) if atlas.is_dir() else []
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return {}, (f"missing {_rel(names.atlas_paths(output_dir, space or '<space>')[1], output_dir)}: "
                    "labels are shown by number, reference regions are unknown")
    try:
        labels = {}
        for rec in read_tsv(path).records():
            idx = int(float(rec.get("index", "")))
            labels[idx] = Label(idx, rec.get("name", NA), rec.get("roi", NA), rec.get("hemi", NA),
                                rec.get("kind", NA))
        return labels, None
    except (ValueError, OSError) as exc:
        return {}, f"{_rel(path, output_dir)} could not be read ({exc})"


class _Builder:
    """Collects everything the template needs; figures are queued and drawn at the end."""

    def __init__(self, output_dir: Path, label: str):
        self.root = output_dir
        self.sub = f"sub-{label}"
        self.sub_dir = output_dir / self.sub
        self.fig_dir = names.figures_dir(self.root, self.sub_dir.name[len("sub-"):])
        self.notes: list[str] = []
        self.queue: list[tuple[Figure, Path, Callable[[Path], Any]]] = []

    # ---- figures
    def figure(self, title: str, caption: str, name: str, inputs: list[Path],
               draw: Callable[[Path], Any], light: bool = False) -> Figure:
        out = self.fig_dir / safe_name(name)
        fig = Figure(title, caption, anchor=safe_name(Path(name).stem), light=light)
        fig.missing = [_rel(p, self.root) for p in inputs if not p.is_file()]
        if not fig.missing:
            self.queue.append((fig, out, draw))
        return fig

    def draw_all(self, n_procs: int = 1) -> None:
        """Draw the queued figures, ``n_procs`` at a time (each one reads its own files)."""
        global _QUEUE
        _QUEUE = self.queue
        try:
            if n_procs > 1 and len(self.queue) > 1 and _can_fork():
                import multiprocessing

                _figures()  # imported before the fork: the workers inherit matplotlib and nilearn
                # fork: the workers inherit the queue (its drawing closures cannot be pickled)
                with multiprocessing.get_context("fork").Pool(min(n_procs, len(self.queue))) as pool:
                    results = pool.map(_draw_one, range(len(self.queue)), chunksize=1)
            else:
                results = [_draw_one(i) for i in range(len(self.queue))]
        finally:
            _QUEUE = []
        for (fig, out, _), result in zip(self.queue, results):
            if result is None:
                fig.src = _rel(out, self.root)
                if fig.flicker:
                    fig.before_src = _rel(_figures().flicker_before(out), self.root)
            elif result[0] == "note":
                fig.note = result[1]
            else:
                fig.error = result[1]
        self.queue = []


_QUEUE: list = []


def _can_fork() -> bool:
    import multiprocessing

    # a daemonic process (a worker of a process pool) may not have children
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def _draw_one(i: int) -> tuple[str, str] | None:
    """Draw figure ``i`` of the queue: None when it was written, else ("note", why there is
    nothing to draw) or ("error", what failed). Tracebacks go to the log file only."""
    _, out, draw = _QUEUE[i]
    try:
        draw(out)
        return None
    except FigureUnavailable as exc:  # nothing to draw: the report says why, the run goes on
        LOG.info("report figure %s not drawn: %s", out.name, exc)
        return "note", str(exc)
    except Exception as exc:  # a bad file must not take the report down
        LOG.warning("report figure %s failed: %s (traceback in the log)", out.name, exc)
        LOG.debug("report figure %s:\n%s", out.name, traceback.format_exc())
        return "error", f"{type(exc).__name__}: {exc}"


def _figures():
    """The figure module: matplotlib and nilearn are imported only when a report is drawn."""
    from . import figures

    return figures


def _template(name: str | None):
    """(Template or None, note or None)."""
    if not name:
        return None, "the template is unknown (no summary.json): template contours are not drawn"
    try:
        from ..templates import get_template

        return get_template(name), None
    except Exception as exc:
        return None, f"template {name} cannot be resolved offline ({exc}): template contours are not drawn"


# --------------------------------------------------------------------------- main
def generate_participant_report(output_dir: Path, participant_label: str, n_procs: int = 1) -> Path:
    """Build ``sub-<label>/figures/*.svg`` from the derivatives on disk and write
    ``OUTPUT_DIR/sub-<label>.html`` atomically. Returns the HTML path.

    The figures are drawn ``n_procs`` at a time. Never raises on a missing derivative: the
    section shows what is missing instead.
    """
    output_dir = Path(output_dir)
    label = str(participant_label)
    label = label[4:] if label.startswith("sub-") else label
    if not _LABEL.match(label):
        raise ValueError(f"invalid participant label {participant_label!r}")
    b = _Builder(output_dir, label)
    context = _build(b)
    b.draw_all(n_procs)
    html = render("participant.html", context)
    return atomic_write_text(output_dir / f"{b.sub}.html", html)


def render(page: str, context: dict[str, Any]) -> str:
    """Render a page template (autoescaped; the shared CSS is inlined by the template)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(page).render(**context)


def _build(b: _Builder) -> dict[str, Any]:
    run_dir, notes = _latest_run_dir(b.sub_dir)
    b.notes.extend(notes)
    summary: dict[str, Any] | None = None
    if run_dir is None:
        b.notes.append(f"no run log folder in {b.sub}/log/: the report lists the derivatives found on disk")
    elif (run_dir / names.SUMMARY).is_file():
        try:
            loaded = read_json(run_dir / names.SUMMARY)
            summary = loaded if isinstance(loaded, dict) else None
            if summary is None:
                b.notes.append(f"{_rel(run_dir / 'summary.json', b.root)} is not a JSON object")
        except (OSError, ValueError) as exc:
            b.notes.append(f"{_rel(run_dir / 'summary.json', b.root)} could not be read ({exc})")
    else:
        b.notes.append(f"no summary.json in {_rel(run_dir, b.root)}: the report lists the derivatives found on disk")

    template_info = (summary or {}).get("template") or {}
    template_name = _s(template_info.get("name"), "") if isinstance(template_info, dict) else ""
    space = safe_name(template_name) if template_name else _guess_space(b.sub_dir)
    tpl, tpl_note = _template(template_name or space)
    if template_name == "" and space:
        b.notes.append(f"template {space} inferred from the file names (no summary.json)")
    if tpl_note:
        b.notes.append(tpl_note)
    labels, labels_note = _labels(b.root, space)
    if labels_note:
        b.notes.append(labels_note)

    sessions = [_session(b, s, space, tpl, labels) for s in _sessions(b, summary)]

    errors = [{k: _s(e.get(k)) for k in ("session_id", "source", "message", "crash_file")}
              for e in _list((summary or {}).get("errors")) if isinstance(e, dict)]
    # what the run warned about (NM-looking files not used, a T1w chosen among several)
    run_warnings = [{k: _s(e.get(k)) for k in ("session_id", "source", "message")}
                    for e in _list((summary or {}).get("warnings")) if isinstance(e, dict)]
    crashes = []
    if run_dir is not None:
        for path in sorted(run_dir.glob("crash-*.txt")):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                text = f"(could not be read: {exc})"
            truncated = len(text) > CRASH_MAX_CHARS
            crashes.append({"name": _rel(path, b.root), "text": text[-CRASH_MAX_CHARS:], "truncated": truncated})

    software = (summary or {}).get("software") or {}
    methods = methods_boilerplate(template_name or space or "unknown", _s((summary or {}).get("version"), __version__),
                                  _atlas_name(b.root, summary, space))
    return {
        "participant_id": b.sub,
        "summary": _summary_view(summary, run_dir, b.root),
        "software": sorted((_s(k), _s(v)) for k, v in software.items()) if isinstance(software, dict) else [],
        "template_name": template_name or space or NA,
        "template_source": _s(template_info.get("source")) if isinstance(template_info, dict) else NA,
        "notes": b.notes,
        "sessions": sessions,
        "warnings": [w for ses in sessions for w in ses.warnings],
        "flags": [f for ses in sessions for f in ses.flags],
        "run_warnings": run_warnings,
        "thresholds": qcw.THRESHOLDS,
        "errors": errors,
        "crashes": crashes,
        "methods": methods,
        "nmbids_version": __version__,
    }


def _summary_view(summary: dict | None, run_dir: Path | None, root: Path) -> dict[str, str] | None:
    if summary is None:
        return None
    keys = ("participant_id", "run_id", "version", "command", "started", "finished")
    view = {k: _s(summary.get(k)) for k in keys}
    if isinstance(summary.get("command"), list):
        view["command"] = " ".join(map(str, summary["command"]))
    view["log_dir"] = _rel(run_dir, root) if run_dir else NA
    return view


def _atlas_name(root: Path, summary: dict | None, space: str | None) -> str | None:
    """The run's atlas (builtin, cit168, user) as summary.json records it, else as the atlas
    sidecar in OUTPUT_DIR/atlas says; None when neither does."""
    from ..atlas import recorded_atlas

    info = (summary or {}).get("atlas")
    if isinstance(info, dict) and isinstance(info.get("name"), str):
        return info["name"]
    return recorded_atlas(root, space) if space else None


def _guess_space(sub_dir: Path) -> str | None:
    """The template space (when there is no summary): the ``SpatialReference`` the T1w in
    template space records in its sidecar, else the space of the run's atlas."""
    for path in sorted(sub_dir.glob(f"**/{names.ANAT}/" + names.SessionFiles(Path(), "*", "*").t1w_template.name)):
        try:
            space = read_json(names.sidecar(path)).get("SpatialReference")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(space, str) and space:
            return space
    for path in sorted((sub_dir.parent / names.ATLAS_DIR).glob(names.atlas_paths(Path(), "*")[0].name)):
        if names.atlas_space(path):
            return names.atlas_space(path)
    return None


def _sessions(b: _Builder, summary: dict | None) -> list[dict[str, Any]]:
    """Sessions as summary.json describes them, or as found on disk."""
    if summary is not None and isinstance(summary.get("sessions"), list):
        return [s for s in summary["sessions"] if isinstance(s, dict)]
    found = []
    if b.sub_dir.is_dir():
        for ses_dir in sorted(b.sub_dir.glob("ses-*")):
            if (ses_dir / "anat").is_dir():
                found.append({"session_id": ses_dir.name, "nm": None})
        if (b.sub_dir / "anat").is_dir():
            found.insert(0, {"session_id": NA, "nm": None})
    return found


def _session(b: _Builder, info: dict[str, Any], space: str | None, tpl, labels) -> SessionView:
    session_id = _s(info.get("session_id"))
    S, anat = _session_dirs(b.sub_dir, session_id)
    view = SessionView(session_id=session_id, anchor=safe_name(S),
                       title=f"session {session_id}" if session_id != NA else "no session",
                       anat_dir=_rel(anat, b.root), t1w=info.get("t1w") and _s(info.get("t1w")),
                       t1w_note=info.get("t1w_note") and _s(info.get("t1w_note")),
                       ignored=[{"path": _s(i.get("path")), "reason": _s(i.get("reason"))}
                                for i in _list(info.get("ignored")) if isinstance(i, dict)])

    files = names.SessionFiles(anat, S, space or "<space>")
    measures_path, qc_path = files.measures, files.qc
    measures_rows: list[dict[str, str]] = []
    qc_rows: list[dict[str, str]] = []
    for path, attr, mark in ((measures_path, "measures", _measures_marks), (qc_path, "qc", _qc_marks)):
        if not path.is_file():
            setattr(view, f"{attr}_missing", f"missing {_rel(path, b.root)}")
            continue
        try:
            tv = _read_table(path, b.root, mark)
        except (OSError, ValueError) as exc:
            setattr(view, f"{attr}_missing", f"{_rel(path, b.root)} could not be read ({exc})")
            continue
        setattr(view, attr, tv)
        recs = [dict(zip(tv.header, r)) for r in tv.rows]
        (measures_rows if attr == "measures" else qc_rows).extend(recs)
    view.warnings = qcw.collect_warnings(qc_rows, measures_rows)
    view.flags = [{"session_id": r.get("session_id", NA), "source": r.get("source", NA), "flag": flag.strip()}
                  for r in qc_rows for flag in (r.get("flags") or NA).split(";") if flag.strip() not in ("", NA)]

    # T1w -> template
    t1w = files.t1w_preproc
    if space:
        t1w_tpl = files.t1w_template
        fig = b.figure(
            f"T1w → template ({space})",
            "The T1w warped to the template, zoomed on the brainstem (MNI box x −30..30, y −50..10, "
            "z −45..5 mm). Lines are the template's own tissue boundaries (iso-intensity contours of "
            "the template T1w): they should follow the warped T1w's brainstem, fourth ventricle, "
            "cisterns and cerebellar outline.",
            names.derivative_name(S, "T1w", ".svg", space=space), [t1w_tpl],
            lambda out: _figures().t1w_to_template(t1w_tpl, tpl.t1w if tpl else None, out))
    else:
        fig = Figure("T1w → template", "", anchor=safe_name(f"{S}_T1w"),
                     missing=[_rel(files.t1w_template, b.root)])
    view.template_figure = fig
    if space and tpl is not None:
        flick = b.figure(
            f"T1w → template ({space}), before/after",
            "The template T1w and the T1w warped to it, alternating every second (hover to hold the "
            "warped T1w): after a good registration the brainstem, fourth ventricle and cerebellum stay "
            "still while only the contrast changes.",
            names.derivative_name(S, "T1w", ".svg", space=space, desc="flicker"), [t1w_tpl],
            lambda out: _figures().t1w_template_flicker(t1w_tpl, tpl.t1w, out))
        flick.flicker = True
        view.template_flicker = flick

    for src in _sources(info, anat, measures_rows, qc_rows):
        view.sources.append(_source(b, S, anat, t1w, src, space, tpl, labels, measures_rows, qc_rows))
    return view


def _sources(info: dict, anat: Path, measures_rows, qc_rows) -> list[dict[str, Any]]:
    """NM sources from summary.json, or (without one) from the files and tables on disk."""
    if info.get("nm") is not None:
        out = []
        for nm in _list(info.get("nm")):
            if isinstance(nm, dict):
                nm = dict(nm)
                nm["prefix"] = _s(nm.get("prefix"), "") or names.prefix_of_source(_s(nm.get("source"), ""))
                out.append(nm)
        return out
    found: dict[str, dict[str, Any]] = {}
    if anat.is_dir():
        tail = names.NMFiles(anat, "", "").nm_preproc.name  # "_desc-preproc_NM.nii.gz"
        for path in sorted(anat.glob("*" + tail)):
            if "_space-" not in path.name:
                prefix = path.name[: -len(tail)]
                found.setdefault(prefix, {"prefix": prefix, "source": prefix})
    for row in qc_rows + measures_rows:
        source = row.get("source", NA)
        prefix = names.prefix_of_source(source)
        if prefix:
            entry = found.setdefault(prefix, {"prefix": prefix, "source": source})
            if entry["source"] == prefix:
                entry["source"] = source
            if row.get("acq_type") and "acq_type" not in entry:
                entry["acq_type"] = row["acq_type"]
    return list(found.values())


def _rows_for(rows: list[dict[str, str]], source: str, prefix: str) -> list[dict[str, str]]:
    return [r for r in rows if r.get("source") == source or names.prefix_of_source(r.get("source", "")) == prefix]


def _source(b: _Builder, S: str, anat: Path, t1w: Path, info: dict, space: str | None, tpl, labels,
            measures_rows, qc_rows) -> SourceView:
    P = safe_name(_s(info.get("prefix"), ""))
    source = _s(info.get("source"))
    rows = _rows_for(measures_rows, source, P)
    qrows = _rows_for(qc_rows, source, P)
    acq = _s(info.get("acq_type"), "") or (qrows[0].get("acq_type") if qrows else "") or \
        (rows[0].get("acq_type") if rows else "") or NA
    view = SourceView(source=source, prefix=P, anchor=safe_name(P), acq_type=acq,
                      evidence=[_s(e) for e in _list(info.get("evidence"))],
                      n_repeats=_s(info.get("n_repeats"), qrows[0].get("n_repeats", NA) if qrows else NA),
                      status=_s(info.get("status")), error=info.get("error") and _s(info.get("error")))

    # coverage as written: QC columns and measures rows
    for q in qrows:
        for col, val in q.items():
            if col.startswith("coverage_"):
                view.coverage.append({"roi": col[len("coverage_"):], "hemi": NA,
                                      "value": val, "table": "qc", "low": qcw.coverage_low(val)})
    for r in rows:
        if r.get("measure") == "coverage":
            view.coverage.append({"roi": r.get("roi", NA), "hemi": r.get("hemi", NA), "value": r.get("value", NA),
                                  "table": "measures", "low": qcw.coverage_low(r.get("value"))})

    if view.status == "failed" and not (anat.is_dir() and any(
            belongs_to_prefix(p.name, P) for p in anat.glob(f"{P}_*"))):
        view.failed_note = (f"This source failed ({view.error or 'no reason recorded'}); no derivative "
                            f"was written for it (nothing named {P}_* in {_rel(anat, b.root)}/). "
                            "See Errors below.")
        return view

    nmf = names.NMFiles(anat, P, space or "<space>")
    nm, nm_t1w, dseg = nmf.nm_preproc, nmf.nm_t1w, nmf.dseg
    fm = _figures()
    view.figures.append(b.figure(
        "Slab coverage",
        "Outline of the NM slab (where the NM image resampled into T1w space holds signal) on the "
        "T1w, three planes through the slab centre. The coverage of each ROI, as written by the "
        "pipeline, is in the table below.",
        names.figure(P, "coverage", "NM"), [t1w, nm_t1w], lambda out: fm.slab_coverage(t1w, nm_t1w, out)))
    view.figures.append(b.figure(
        "NM → T1w registration",
        "The NM image resampled into T1w space (grey), zoomed on the slab, with the CSF/tissue "
        "boundary of the T1w (cyan iso-intensity contour). It should run along the borders of the "
        "midbrain, pons, fourth ventricle and aqueduct seen in the NM image; a line shifted or "
        "rotated against the NM anatomy means misregistration.",
        names.figure(P, "nm2t1w", "NM"), [t1w, nm_t1w], lambda out: fm.nm_to_t1w(t1w, nm_t1w, out)))
    view.figures.append(b.figure(
        "ROIs and reference regions (native NM space)",
        "The NM image as acquired (no resampling; axes flipped to the closest RAS orientation), "
        "zoomed on the labelled region: top row as is, bottom row with the atlas ROIs pulled into "
        "NM space (solid: target nuclei; dashed: reference regions). The bright nuclei should sit "
        "inside the solid outlines.",
        names.figure(P, "rois", "NM"), [nm, dseg], lambda out: fm.rois_native(nm, dseg, labels, out)))

    crmaps = [nmf.crmap] if space else []
    crmaps = [p for p in crmaps if p.is_file()] or sorted(
        p for p in anat.glob(names.NMFiles(anat, P, "*").crmap.name) if belongs_to_prefix(p.name, P)) or crmaps
    if crmaps:
        crmap = crmaps[0]
        bg = Path(tpl.t1w) if tpl is not None else names.SessionFiles(anat, S, space).t1w_template
        view.figures.append(b.figure(
            "Contrast-ratio map (template space)",
            f"The voxelwise CR map on the template T1w, zoomed on the brainstem; colours span "
            f"{fm.CR_DISPLAY[0]} to {fm.CR_DISPLAY[1]} (values beyond are clipped); the white line "
            "outlines where the map is defined (the slab).",
            names.derivative_name(P, "NM", ".svg", space=space or "template", desc="crmap"), [crmap, bg],
            # bound now: ``bg`` is reused below and the figure is drawn later
            lambda out, g=bg, c=crmap: fm.template_map(g, c, out, "contrast ratio (unitless)", "inferno",
                                                        fm.CR_DISPLAY, name="CR map")))
    else:
        view.figures.append(Figure("Contrast-ratio map (template space)", "", anchor=safe_name(f"{P}_{names.CRMAP_SUFFIX}"),
                                   missing=[_rel(nmf.crmap, b.root)]))

    ref_rows = [r for r in rows if r.get("measure") == "reference_value"]
    targets: dict[str, list[str]] = {}
    for r in rows:
        ref, roi = r.get("reference", NA), r.get("roi", NA)
        # the histogram is of native intensities: template-space values had the template's reference
        if ref and ref != NA and roi != ref and r.get("measure") != "reference_value" \
                and r.get("space", "native") != "template":
            base = roi.split("_")[0]
            if base not in targets.setdefault(ref, []) and any(l.roi == base for l in labels.values()):
                targets[ref].append(base)
    fig = b.figure(
        "Reference-region intensities",
        "Histogram of the NM intensities (native space) inside each reference region, with the "
        "intensities of the target nuclei measured against it outlined. The vertical line is the "
        "reference value written in the measures table (measure reference_value) with its statistic; "
        "it should sit at the peak (mode) or centre (median, mean) of the filled histogram.",
        names.figure(P, "refhist", "NM"), [nm, dseg],
        lambda out: fm.reference_histogram(nm, dseg, labels, ref_rows, targets, out), light=True)
    if not labels:
        fig.note = "no atlas label table: reference regions cannot be identified in the label image"
    view.figures.append(fig)

    # acquisition-specific
    # the slice-wise LC methods (the default chooses voxels by their neighbours; the old one by
    # their own brightness)
    lc_rows = [r for r in rows if r.get("roi", "").startswith("LC_") and r.get("measure") == "cr"
               and r.get("method", "").endswith("max_per_slice")]
    if lc_rows or acq.upper() == "FSE":
        if lc_rows:
            view.specific.append(b.figure(
                "LC slice profile",
                "LC contrast (slice-wise CR) along the nucleus, from the measures table rows roi "
                f"LC_rostral/LC_middle/LC_caudal, measure cr, method {lc_rows[0].get('method')}. "
                "Values are as written.",
                names.figure(P, "lcprofile", "NM"), [],
                lambda out: fm.lc_profile(lc_rows, None, out), light=True))
        else:
            view.specific.append(Figure("LC slice profile", "", anchor=safe_name(f"{P}_lcprofile"),
                                        missing=["measures rows roi LC_*, measure cr, a slice-wise "
                                                 "method (*max_per_slice)"]))
    motion_tsv = nmf.motion
    if motion_tsv.is_file():
        view.specific.append(b.figure(
            "Motion between repeats",
            f"Per-repeat motion relative to the first repeat, as written in {motion_tsv.name}.",
            names.figure(P, "motion", "NM"), [motion_tsv],
            lambda out: fm.motion(motion_tsv, out, qcw.MOTION_MAX_MM), light=True))
    elif _s(view.n_repeats) not in (NA, "0", "1", ""):
        view.specific.append(Figure("Motion between repeats", "", anchor=safe_name(f"{P}_motion"),
                                    missing=[_rel(motion_tsv, b.root)]))
    # the MT pair's maps, native and in template space (in the order of their names)
    maps = [(nmf.mtrmap, None, "MTR map"), (nmf.mtemap, None, "mte map")]
    maps += [(nmf.mtrmap_template, space, "MTR map"), (nmf.mtemap_template, space, "mte map")] if space else []
    for path, map_space, title in maps:
        if not path.is_file():
            continue
        if map_space:
            bg = Path(tpl.t1w) if tpl is not None else names.SessionFiles(anat, S, map_space).t1w_template
            draw = (lambda out, p=path, g=bg, t=title: fm.template_map(g, p, out, t, "viridis", name=t))
        else:
            bg = nm
            draw = (lambda out, p=path, g=bg, t=title: fm.native_map(g, p, out, t))
        view.specific.append(b.figure(
            title, f"{path.name} (colour range: 2nd to 98th percentile of the map; white line: where it "
            "is defined).", path.name.split(".")[0] + ".svg", [path, bg], draw))
    if acq.upper() == "MTR" and not any(f.title.lower().startswith(("mtr", "mt")) for f in view.specific):
        view.specific.append(Figure("MTR map", "", anchor=safe_name(f"{P}_mtr"),
                                    missing=[_rel(nmf.mtrmap, b.root)]))
    if not view.specific:
        view.specific_note = f"nothing specific to {acq} acquisitions to show"
    return view
