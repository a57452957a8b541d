"""Imported by the fork server of ``nmbids.workerpool`` only: nipype's messages from the
workers go to the run's log file, as the main process's do, never to the console."""
import logging
import os

from .workerpool import LOG_FILE_ENV, LOG_FORMAT, LogFile, route_nipype_logs

_path = os.environ.get(LOG_FILE_ENV)
if _path:
    _handler = LogFile(_path)
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    route_nipype_logs([_handler])
else:
    route_nipype_logs([logging.NullHandler()])
