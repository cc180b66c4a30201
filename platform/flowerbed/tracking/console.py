"""The terminal's two streams: progress on stdout, warnings and errors on stderr.

Hydra's job logging (conf/config.yaml, `hydra.job_logging`) sends every record at INFO to
stdout through `ProgressOnly` and every WARNING or worse to stderr, so `2>errors.txt`
keeps a run's problems apart from its progress.
"""

from __future__ import annotations

import logging


class ProgressOnly(logging.Filter):
    """Let through what is below WARNING: stdout carries progress, stderr the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING
