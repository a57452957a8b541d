"""The command line, with fMRIPrep/MRIQC names and spellings."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import __version__
from .contract import exits
from .acquisitions import DEFAULT_REF_STAT, REF_STATS
from .atlas import atlas_choice
from .cit168_atlas import ENV_DIR as CIT168_ENV_DIR

# --mem: a bare number is GB (as MRIQC's --mem-gb); one this large is surely fMRIPrep's MB
MEM_SURELY_MB = 1000
_MEM = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_MEM_UNIT_GB = {"k": 1 / 1024 ** 2, "m": 1 / 1024, "g": 1.0, "t": 1024.0}


class MemoryGB(float):
    """--mem in GB; ``note`` is the warning to print when a bare number was read as MB."""

    note: str | None = None


def parse_mem(text: str) -> MemoryGB:
    """``16G``, ``16GB``, ``16000MB``, ``16000M`` or a bare number of GB (``16``); a bare
    number of at least MEM_SURELY_MB is read as MB, with a note."""
    m = _MEM.match(str(text))
    if not m or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"invalid memory {text!r} (examples: 16G, 16000MB, 16)")
    value, unit = float(m[1]), (m[2] or "")[:1].lower()
    if unit:
        return MemoryGB(value * _MEM_UNIT_GB[unit])
    if value >= MEM_SURELY_MB:
        mem = MemoryGB(value / 1024)
        mem.note = (f"--mem {text}: read as {value:g} MB ({mem:.1f} GB); a bare number is GB, "
                    f"write {text}MB or {mem:.0f}G to say which")
        return mem
    return MemoryGB(value)


def exit_codes_epilog() -> str:
    """The exit codes, from nmbids.contract.exits (their one definition), for --help."""
    lines = [f"  {code:>3}  {meaning}" for code, meaning in exits.EXIT_MEANINGS.items()]
    return "exit codes:\n" + "\n".join(lines)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Defaults are written into the help texts where they matter (no '(default: None)')."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 64 (EX_USAGE), not argparse's 2
        self.print_usage()
        self.exit(exits.EXIT_USAGE, f"nmbids: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nmbids",
        description="nmbids: neuromelanin-sensitive MRI (GRE-MT, FSE/TSE, MT ratio) as a BIDS App. "
                    "Participant level: contrast ratio, CNR, volume and MTR in SN, VTA and LC, "
                    "voxelwise maps in template space and an HTML report. Group level: summary "
                    "tables, statistics with covariates, harmonisation, voxelwise tests.",
        formatter_class=_Formatter,
        epilog=exit_codes_epilog(),
    )
    p.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where derivatives are written")
    p.add_argument("analysis_level", help="'participant' or 'group'")
    p.add_argument("--version", action="version", version=f"nmbids {__version__}")

    g = p.add_argument_group("Selecting data")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="participants to process, with or without 'sub-' (default: all)")
    g.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                   help="sessions to process, with or without 'ses-' (default: all)")
    g.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, metavar="FILE",
                   help="JSON with pybids queries per input kind, e.g. "
                        '{"t1w": {"acquisition": null}, "nm": {"acquisition": "NM", "acq_type": "GREMT"}}; '
                        "'acq_type' (GREMT, FSE, MTR) overrides the classification; as in pybids and fMRIPrep, "
                        '"*" is any value, null is absent, a list is any of, and "regex_search": true makes '
                        "the values regular expressions")
    g.add_argument("--bids-database-dir", type=Path, metavar="DIR",
                   help="accepted for compatibility and ignored: nmbids walks the anat folders directly "
                        "and keeps no index database")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="do not run the BIDS validator on the input dataset")

    g = p.add_argument_group("Processing")
    g.add_argument("--template", default=None,
                   help="template space (default: MNI152NLin2009cAsym when cached by TemplateFlow, "
                        "else the MNI152NLin2009aSym that ships with nilearn)")
    g.add_argument("--atlas", type=atlas_choice, default=None, metavar="{builtin,cit168,DSEG}",
                   help="the ROIs: 'builtin' (default: nmbids' search regions from published coordinates), "
                        "'cit168' (SN and VTA from the CIT168 atlas, Pauli et al. 2018, when its files are "
                        f"installed: the containers bake them in, else ${CIT168_ENV_DIR} or nilearn's data "
                        "folder; LC and reference regions built in; missing files: exit 64), or a user ROI "
                        "label image in the template space with a TSV beside it (same name, .tsv) with "
                        "columns index, name, roi, hemi, kind (a file named cit168: ./cit168)")
    g.add_argument("--ref-stat", choices=REF_STATS, default=DEFAULT_REF_STAT,
                   help=f"statistic of the reference region for contrast ratios (default: {DEFAULT_REF_STAT})")
    g.add_argument("--registration-quality", choices=("default", "fast"), default="default",
                   help="'fast' registers at lower resolution (tests and quick looks; default: default)")
    g.add_argument("--reports-only", action="store_true",
                   help="only rebuild the HTML reports from existing outputs")
    g.add_argument("--dry-run", action="store_true",
                   help="only find and classify the inputs: print, per participant and session, the T1w "
                        "chosen, each NM image with its acquisition type and the evidence, the repeats "
                        "and every skipped file with its reason; writes nothing but the log")
    g.add_argument("--boilerplate-only", "--boilerplate_only", action="store_true",
                   help="only write the methods text (logs/CITATION.md) for the data found, and print it")
    g.add_argument("--random-seed", "--seed", dest="random_seed", type=int, default=None, metavar="N",
                   help="seed of the registrations' sampling and of the voxelwise permutations, recorded "
                        "in the outputs (default: a fixed seed for the registrations, 0 for the permutations)")

    g = p.add_argument_group("Performance")
    g.add_argument("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", type=int, default=None, metavar="N",
                   help="CPUs to use (default: all CPUs). Several participants run at once when "
                        "there are more CPUs than one participant's steps can use")
    g.add_argument("--omp-nthreads", type=int, default=None, metavar="N",
                   help="threads per ANTs step (default: the CPUs per participant, at most 8); "
                        "nprocs // N participants run at once")
    g.add_argument("--mem", "--mem-gb", "--mem_gb", type=parse_mem, default=None, metavar="SIZE",
                   help="memory to schedule within, with a unit (16G, 16000MB) or a bare number of GB "
                        f"(a bare number of {MEM_SURELY_MB} or more is read as MB, with a warning)")
    g.add_argument("--resource-monitor", action="store_true",
                   help="record each step's time, peak memory and CPU use (nipype's resource monitor) "
                        "in sub-<label>/log/<run>/resource_monitor.tsv")
    g.add_argument("--clean-workdir", action="store_true",
                   help="remove a participant's folder in the work directory once it finished without "
                        "error (failed participants keep theirs, to resume)")
    g.add_argument("-w", "--work-dir", type=Path, default=None, metavar="DIR",
                   help="work directory; re-running with the same one resumes (default: ./work)")
    g.add_argument("--use-plugin", type=Path, metavar="YAML",
                   help="nipype plugin settings (plugin: and plugin_args:), e.g. for SLURM")
    g.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failure")
    g.add_argument("--notrack", action="store_true", help="accepted for compatibility: nmbids never phones home")

    g = p.add_argument_group("Group level")
    g.add_argument("--group-column", default=None,
                   help="participants.tsv column with the groups (default: 'group' when present)")
    g.add_argument("--covariates", nargs="+", default=[], metavar="COL",
                   help="columns of participants.tsv, or of the QC table (per image: snr, motion_max_mm, ...), "
                        "e.g. age sex snr")
    g.add_argument("--reference-group", default=None, help="the group other groups are compared to")
    g.add_argument("--predictor", default=None, metavar="COL",
                   help="a continuous participants.tsv column to test instead of groups")
    g.add_argument("--robust", action="store_true", help="heteroskedasticity-robust (HC3) standard errors")
    g.add_argument("--harmonize", default=None, metavar="COL",
                   help="harmonise across this participants.tsv column (site, scanner) with ComBat")
    g.add_argument("--n-permutations", type=int, default=1000, metavar="N",
                   help="permutations of the voxelwise test (default: 1000)")
    g.add_argument("--no-voxelwise", action="store_true", help="skip the voxelwise group test")
    g.add_argument("--exclude", type=Path, metavar="TSV",
                   help="participants, sessions or NM images to leave out of the group level: a TSV with "
                        "columns participant_id, session_id, source (n/a or empty: all) and reason")

    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more output: each step as it finishes (-vv: debug)")
    return p
