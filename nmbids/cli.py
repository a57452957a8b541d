"""``nmbids`` entry point: parse arguments, run a level, map failures to exit codes.

Users see one line per problem; tracebacks go to the log file under OUTPUT_DIR/logs.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

# Never contact the network at run time: nipype's version check and telemetry are off.
os.environ.setdefault("NIPYPE_NO_ET", "1")
os.environ.setdefault("NO_ET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from . import __version__  # noqa: E402
from .contract.exits import (EXIT_CANTCREAT, EXIT_DATA, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_IOERR,  # noqa: E402
                     EXIT_NO_FILES, EXIT_NO_INPUT, EXIT_OK, EXIT_UNKNOWN_LEVEL, EXIT_USAGE, EXIT_VALIDATION,
                     NmbidsError)
from .parser import build_parser  # noqa: E402

LOG = logging.getLogger("nmbids")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # before anything imports matplotlib: a writable config folder even on a read-only HOME
    from .mplconfig import configure_matplotlib_env

    configure_matplotlib_env()
    _setup_console(args.verbose)  # errors before the log file exists (bad paths) look the same
    if getattr(args.mem, "note", None):
        LOG.warning(args.mem.note)
    try:
        return run(args, argv if argv is not None else sys.argv[1:])
    except NmbidsError as err:
        LOG.error(err.line())
        return err.code
    except KeyboardInterrupt:
        LOG.error("interrupted")
        return EXIT_INTERRUPTED
    except OSError as err:  # e.g. the output disk is full: name the file, no traceback
        LOG.debug(traceback.format_exc())
        LOG.error("%s", io_error_line(err))
        return EXIT_IOERR
    except Exception:  # a bug: one line for the user, the traceback in the log
        LOG.debug(traceback.format_exc())
        LOG.error("nmbids failed unexpectedly: %s (traceback in %s)", sys.exc_info()[1],
                  getattr(LOG, "logfile", "the log"))
        return EXIT_FAILURE


def io_error_line(err: OSError, participant: str | None = None) -> str:
    what = f"{err.filename}: " if err.filename else ""
    return (f"sub-{participant}: " if participant else "") + \
        f"{what}I/O error: {err.strerror or err}; no partial file was left in its place"


class _LogFile(logging.FileHandler):
    """A log file that cannot be written (disk full) must not print tracebacks on the console."""

    def handleError(self, record):
        pass


class _OneLine(logging.Formatter):
    """Console lines never carry a traceback (even at -vv, even from a library's record):
    those go to the log file; the console says where. Wraps the console's own formatter."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record):
        record = logging.makeLogRecord(record.__dict__)
        tb = record.exc_info or record.exc_text or record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        line = self.inner.format(record)
        if "Traceback (most recent call last)" in line:
            line, tb = line.split("Traceback (most recent call last)", 1)[0].rstrip(), True
        return f"{line} (traceback in the log file)" if tb else line


def _setup_console(verbose: int) -> None:
    """Console: one-line messages (progress, warnings and above; info with -v)."""
    from .progress import console_handler

    LOG.setLevel(logging.DEBUG)
    LOG.handlers.clear()
    LOG.propagate = False
    handler = console_handler(verbose)
    handler.setFormatter(_OneLine(handler.formatter))
    LOG.addHandler(handler)


def _setup_logging(output_dir: Path, run_id: str) -> Path:
    """The log file: everything, tracebacks included."""
    from .contract.names import run_log

    logfile = run_log(output_dir, run_id)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    fh = _LogFile(logfile)
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    LOG.addHandler(fh)
    LOG.logfile = logfile
    return logfile


def _check_paths(args) -> None:
    bids_dir = args.bids_dir.resolve()
    output_dir = args.output_dir.resolve()
    if not bids_dir.is_dir():
        raise NmbidsError(f"BIDS directory {args.bids_dir} does not exist", code=EXIT_NO_INPUT)
    if not (bids_dir / "dataset_description.json").exists():
        raise NmbidsError(f"{args.bids_dir} is not a BIDS dataset (no dataset_description.json)",
                          code=EXIT_NO_INPUT)
    if output_dir == bids_dir:
        raise NmbidsError("the output directory must not be the BIDS directory", code=EXIT_USAGE)
    work = (args.work_dir or Path.cwd() / "work").resolve()
    if work == bids_dir or bids_dir in work.parents:
        raise NmbidsError("the work directory must not be inside the BIDS directory", code=EXIT_USAGE)
    processes = not (getattr(args, "dry_run", False) or getattr(args, "boilerplate_only", False))
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".nmbids-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        if processes:  # a dry run writes nothing but its log
            work.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NmbidsError(f"cannot write to {err.filename or output_dir}: {err.strerror}",
                          code=EXIT_CANTCREAT) from None
    args.bids_dir, args.output_dir, args.work_dir = bids_dir, output_dir, work
    for name in ("use_plugin", "bids_filter_file", "atlas", "bids_database_dir", "exclude"):  # relative to
        if isinstance(getattr(args, name, None), Path):                                      # the caller's folder
            setattr(args, name, getattr(args, name).absolute())                              # (not a keyword)
    # Nipype returns to the starting folder after every node: start from one that is sure to
    # exist and stay (a container's working dir may be missing or vanish under a tmpfs).
    if processes:
        os.chdir(work)


def run(args, argv) -> int:
    level = args.analysis_level
    if level not in ("participant", "group"):
        print(f"nmbids: error: unknown analysis level {level!r} (use 'participant' or 'group')", file=sys.stderr)
        return EXIT_UNKNOWN_LEVEL
    _check_paths(args)
    from .execute import new_run_id

    run_id = new_run_id()
    logfile = _setup_logging(args.output_dir, run_id)
    command = "nmbids " + " ".join(shlex.quote(str(a)) for a in argv)
    LOG.info("nmbids %s, run %s; log: %s", __version__, run_id, logfile)
    LOG.debug("command: %s", command)
    if level == "group":
        return _group(args)
    return _participant(args, run_id, command)


def _validate(bids_dir: Path) -> None:
    """Run the BIDS validator when it is installed; errors stop the run (exit 16)."""
    # also beside our interpreter: a venv's bin/ is often not on PATH (.venv/bin/nmbids ...)
    here = Path(sys.executable).parent
    exe = next((str(here / n) for n in ("bids-validator-deno",) if (here / n).exists()), None) \
        or shutil.which("bids-validator-deno") or shutil.which("bids-validator")
    if not exe:
        LOG.warning("BIDS validator not installed: validation skipped")
        return
    try:
        proc = subprocess.run([exe, "--json", str(bids_dir)], capture_output=True, text=True, timeout=600)
        report = json.loads(proc.stdout or "{}")
    except (subprocess.TimeoutExpired, ValueError, OSError) as err:
        LOG.warning("BIDS validator could not run (%s): validation skipped", err)
        return
    issues = report.get("issues", {})
    errors = [i for i in issues.get("issues", []) if i.get("severity") == "error"] \
        if isinstance(issues, dict) else []
    if errors:
        codes = sorted({e.get("code", "?") for e in errors})
        LOG.debug("validator errors: %s", json.dumps(errors[:50], indent=1))
        raise NmbidsError(f"{bids_dir} failed BIDS validation ({len(errors)} errors: {', '.join(codes[:5])}); "
                          "fix the dataset or use --skip-bids-validation", code=EXIT_VALIDATION)


def _load_filters(path: Path | None) -> dict:
    if not path:
        return {}
    try:
        filters = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise NmbidsError(f"cannot read the BIDS filter file: {err}", code=EXIT_USAGE, path=str(path)) from None
    from .bids import check_filters

    return check_filters(filters, str(path))


def _participant(args, run_id: str, command: str) -> int:
    from .atlas import atlas_name, check_atlas, prepare_atlas
    from .bids import check_label, discover, strip_prefix
    from .outputs import write_dataset_description
    from .schedule import plan_resources, run_all
    from .templates import get_template

    if args.reports_only:
        return _reports_only(args)
    atlas_problem = None
    if not args.boilerplate_only:  # an atlas that cannot be had stops the run before any work
        try:
            check_atlas(args.atlas)
        except NmbidsError as err:
            if not args.dry_run:
                raise
            atlas_problem = err  # a dry run reports it after what it found
    filters = _load_filters(args.bids_filter_file)
    if args.use_plugin:  # a broken plugin file is a usage error before any work, not a crash later
        from .plugin import read_plugin_file
        read_plugin_file(args.use_plugin)
    if not args.skip_bids_validation and not args.dry_run:
        _validate(args.bids_dir)
    nprocs = args.nprocs or os.cpu_count() or 1
    args.nprocs = nprocs

    labels = [strip_prefix(lbl, "sub-") for lbl in args.participant_label or []]
    sessions = [check_label(strip_prefix(s, "ses-"), "session") for s in args.session_label or []]
    plans = discover(args.bids_dir, labels or None, sessions or None, filters, args.bids_database_dir)
    has_nm = any(nm for pl in plans.values() for s in pl for nm in s.nm)
    if args.dry_run:
        return _dry_run(args, plans, has_nm, atlas_problem)
    try:
        template = get_template(args.template)
    except LookupError as err:
        raise NmbidsError(str(err), code=EXIT_NO_INPUT) from None
    from .reports.participant import write_citation
    if args.boilerplate_only:
        path = write_citation(args.output_dir, template.name, __version__, atlas_name(args.atlas))
        print(path.read_text())
        LOG.info("methods text: %s", path)
        return EXIT_OK if has_nm else EXIT_NO_FILES
    write_dataset_description(args.output_dir, args.bids_dir)
    atlas, atlas_table = prepare_atlas(args.output_dir, template, args.atlas)
    write_citation(args.output_dir, template.name, __version__, atlas_name(args.atlas))

    if not has_nm:
        raise NmbidsError(no_nm_line(plans), code=EXIT_NO_FILES)
    resources = plan_resources(len(plans), nprocs, args.omp_nthreads, args.mem)
    LOG.info("%d participant(s): %s", len(plans), resources.describe())
    results = run_all(plans, dict(bids_dir=args.bids_dir, output_dir=args.output_dir, work_dir=args.work_dir,
                                  template=template, atlas=atlas, atlas_table=atlas_table, options=args,
                                  run_id=run_id, command=command),
                      resources, stop_on_first_crash=args.stop_on_first_crash)
    codes = [r.code for r in results]
    outcomes = {r.participant: r.outcome for r in results if r.outcome is not None}
    print(final_line(plans, outcomes, sum(c == EXIT_OK for c in codes), args.output_dir), file=sys.stderr)
    for code in (EXIT_IOERR, EXIT_FAILURE, EXIT_DATA, EXIT_NO_INPUT):
        if code in codes:
            return code
    return EXIT_OK


def no_nm_line(plans: dict) -> str:
    """Why nothing can be done: how many anat images were seen, where the NM-looking files
    that could not be used are (hidden, misnamed), and how to name NM images."""
    from .bids import NM_NAMING_HINT

    sessions = [s for pl in plans.values() for s in pl]
    seen = sum(s.n_anat for s in sessions)
    unused = [i for s in sessions for i in s.unused_nm()]
    line = f"no NM images found for the selected participants ({seen} anat image(s) seen)"
    if unused:
        shown = ", ".join(i["path"] for i in unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
        hidden = sum(Path(i["path"]).name.startswith(".") for i in unused)
        line += (f"; {len(unused)} file(s) look like NM but were not used"
                 + (f" ({hidden} hidden)" if hidden else "") + f": {shown}")
    return f"{line}; {NM_NAMING_HINT}"


def final_line(plans: dict, outcomes: dict, done: int, output_dir: Path) -> str:
    """The last console line: participants, sessions and NM images, measured and skipped. A
    participant that crashed counts all its sessions and NM images as skipped."""
    ses_ok = ses_skip = nm_ok = nm_skip = 0
    for participant, pl in plans.items():
        out = outcomes.get(participant)
        if out is not None:
            ses_ok, ses_skip = ses_ok + out.sessions_measured, ses_skip + out.sessions_skipped
            nm_ok, nm_skip = nm_ok + out.nm_measured, nm_skip + out.nm_skipped
        else:
            ses_skip += len(pl)
            nm_skip += sum(len(s.nm) + len(s.unused_nm()) for s in pl)
    return (f"nmbids: {done} of {len(plans)} participant(s) processed without error; "
            f"{ses_ok} of {ses_ok + ses_skip} session(s) and {nm_ok} of {nm_ok + nm_skip} NM image(s) measured "
            f"({ses_skip} session(s), {nm_skip} NM image(s) skipped); outputs in {output_dir}")


def _dry_run(args, plans, has_nm: bool, atlas_problem: NmbidsError | None = None) -> int:
    """Print what discovery found, then every problem that would stop the run; the atlas's
    (a usage error) decides the exit code over "no NM images"."""
    from .dryrun import describe

    for line in describe(plans, args.bids_dir):
        print(line)
        LOG.debug("dry run: %s", line)  # the log file keeps what was shown
    problems = [p for p in (None if has_nm else NmbidsError(no_nm_line(plans), code=EXIT_NO_FILES),
                            atlas_problem) if p is not None]
    for problem in problems[:-1]:
        LOG.error(problem.line())
    if problems:
        raise problems[-1]
    return EXIT_OK


def _reports_only(args) -> int:
    from .reports.participant import generate_participant_report

    subs = sorted(p.name[4:] for p in args.output_dir.glob("sub-*") if p.is_dir())
    if args.participant_label:
        from .bids import strip_prefix
        subs = [s for s in subs if s in {strip_prefix(x, "sub-") for x in args.participant_label}]
    if not subs:
        raise NmbidsError("no participant outputs to build reports from", code=EXIT_NO_INPUT)
    for s in subs:
        path = generate_participant_report(args.output_dir, s, n_procs=args.nprocs or os.cpu_count() or 1)
        LOG.info("report: %s", path)
    return EXIT_OK


def _group(args) -> int:
    from .group.run import run_group

    return run_group(args.bids_dir, args.output_dir, participant_label=args.participant_label,
                     session_label=args.session_label, group_column=args.group_column,
                     covariates=tuple(args.covariates), reference_group=args.reference_group,
                     predictor=args.predictor, robust=args.robust, harmonize=args.harmonize,
                     n_permutations=args.n_permutations, seed=args.random_seed, voxelwise=not args.no_voxelwise,
                     exclude=args.exclude, logger=LOG)


if __name__ == "__main__":
    sys.exit(main())
