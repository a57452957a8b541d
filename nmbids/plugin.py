"""nipype's configuration for a participant's graph: where crash files go, what is logged, and
the plugin (``--nprocs``, ``--mem``, ``--use-plugin``) the graph runs with."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .contract.exits import EXIT_USAGE, NmbidsError


def configure_nipype(log_dir: Path, options, sub: str) -> None:
    from nipype import config, logging as nlogging

    from .progress import NodeFinished

    config.update_config({
        "execution": {"crashdump_dir": str(log_dir), "crashfile_format": "txt",
                      "stop_on_first_crash": bool(options.stop_on_first_crash),
                      "remove_unnecessary_outputs": False, "check_version": False,
                      "create_report": False, "write_provenance": False,
                      # the scheduler loop sleeps this long between checks: 2 s (nipype's
                      # default) cost about 4 s per participant; keep it for batch plugins,
                      # whose checks query the cluster
                      "poll_sleep_duration": 2 if options.use_plugin else 0.2},
        # --resource-monitor: nipype samples each node's memory and CPU (summary in the log folder)
        "monitoring": {"enabled": bool(getattr(options, "resource_monitor", False)), "sample_frequency": 0.5},
    })
    if getattr(options, "resource_monitor", False):
        config.enable_resource_monitor()  # nipype caches the setting: set it explicitly
    else:
        config.disable_resource_monitor()
    nlogging.update_logging(config)
    # nipype prints node crashes with tracebacks to the console: route them to our log file only
    # Python warnings of the steps (numpy on a degenerate image, ...) too: the log file only
    logging.captureWarnings(True)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils", "py.warnings"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in logging.getLogger("nmbids").handlers if isinstance(h, logging.FileHandler)]
        lg.propagate = False
    logging.getLogger("nipype.workflow").addHandler(NodeFinished(sub))  # -v: one line per finished step


PLUGIN_KEYS = {"plugin", "plugin_args"}


def read_plugin_file(path: Path) -> dict:
    """The ``--use-plugin`` YAML (``plugin:`` and ``plugin_args:``), checked before any work.

    Any problem is a usage error (exit 64) with one line naming the file.
    """
    import yaml
    from nipype.pipeline import plugins

    def bad(problem: str):
        return NmbidsError(f"--use-plugin: {problem}", code=EXIT_USAGE, path=str(path))

    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise bad(f"cannot read the file ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise bad(f"not valid YAML{where}") from None
    if not isinstance(spec, dict):
        raise bad("expected a mapping with 'plugin:' and optionally 'plugin_args:'")
    if set(spec) - PLUGIN_KEYS:
        raise bad(f"unknown key(s) {', '.join(sorted(map(str, set(spec) - PLUGIN_KEYS)))} "
                  "(allowed: plugin, plugin_args)")
    name = spec.get("plugin")
    known = sorted(n[:-len("Plugin")] for n in dir(plugins) if n.endswith("Plugin"))
    if not isinstance(name, str) or name not in known:
        raise bad(f"unknown nipype plugin {name!r} (one of: {', '.join(known)})")
    args = spec.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise bad("'plugin_args' must be a mapping")
    return {"plugin": name, "plugin_args": args}


def _user_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers run with -u)
        return "nmbids"


def plugin_settings(options) -> dict:
    nprocs = options.nprocs or 1
    if options.use_plugin:
        spec = read_plugin_file(options.use_plugin)
        # nipype's batch plugins (SLURM, SGE, PBS, ...) name jobs after $LOGNAME, which containers
        # and batch jobs often lack
        os.environ.setdefault("LOGNAME", _user_name())
        if spec["plugin"] in ("MultiProc", "LegacyMultiProc"):  # --nprocs/--mem unless the file says
            spec["plugin_args"].setdefault("n_procs", nprocs)
            spec["plugin_args"].setdefault("raise_insufficient", False)
            if options.mem:
                spec["plugin_args"].setdefault("memory_gb", options.mem)
        return spec
    if nprocs <= 1:
        return {"plugin": "Linear"}
    args = {"n_procs": nprocs, "raise_insufficient": False}
    if options.mem:
        args["memory_gb"] = options.mem
    return {"plugin": "MultiProc", "plugin_args": args}


def preload_step_modules(settings: dict) -> None:
    """Import ANTsPy in this process before a graph whose workers fork from it.

    Why: MultiProc forks its workers from this process, and each one would otherwise import
    ANTsPy (about 2 s of CPU) before its first step; a lone participant on 2 CPUs ran 2 s
    faster and used 4 s less CPU with the import done here once. Importing creates no
    threads, so forking after it is safe. The batch plugins run their steps in jobs of their
    own, which import it anyway: nothing to gain here for them.
    """
    if settings.get("plugin") in ("MultiProc", "LegacyMultiProc", "Linear"):
        import ants  # noqa: F401

