"""Bounded logs: every log file of a node is rotated by size, all of them within ``log.max.total.mb``.

A node writes these logs into ``<root>/var/log/appliance``, and nothing else:

* supervisord's own log and the output of each program it runs (model server, Envoy, agent,
  logviewer, object store): supervisord rotates them itself (``*_logfile_maxbytes`` and
  ``*_logfile_backups``, rendered from :func:`limits`). SeaweedFS logs to stderr only
  (``-logtostderr``), so its glog files no longer pile up in ``/tmp``: its lines are in
  objectstore.log;
* Envoy's access log (``enable.access.log``): Envoy writes it itself and cannot rotate a file.
  The agent checks its size ten times a second; past its limit it renames ``access.log`` to
  ``access.log.1`` (shifting the older ones, dropping the last, and more while the kept ones
  pass the log's share) and asks Envoy to reopen its logs (admin ``POST /reopen_logs``): no line
  is lost, lines still buffered land in the new file.

Each log gets a share of the budget (:data:`SHARES`, renormalized over the logs a node of its
role may write), split over the current file and :data:`BACKUPS` rotated ones. The
shares add up to :data:`USED` of the budget: a file is rotated just *after* it passed its limit
(by one write for supervisord, by at most 0.1 s of access log for the agent), and the rest of
the budget absorbs that.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config, NodePaths
from .localhttp import get_text

log = logging.getLogger(__name__)

#: Rotated files kept per log, besides the current one.
BACKUPS = 3
#: The part of log.max.total.mb the limits add up to; the rest is slack for rotation lag.
USED = 0.85
#: Relative weight of each log: the request-driven ones get most.
SHARES = {"model_server": 5, "access": 5, "envoy": 3, "objectstore": 3, "agent": 2,
          "logviewer": 1, "supervisord": 1}
ACCESS_LOG = "access.log"
#: Below this a limit makes no sense (supervisord's own log line is up to a few KiB).
MIN_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class LogLimit:
    max_bytes: int      # the current file is rotated past this
    backups: int        # rotated files kept


def written_logs(config: Config) -> list[str]:
    """The logs a node of this role may write, by the name of :data:`SHARES`.

    Optional ones (the logviewer's, the access log) count whether they are on or not: switching
    one must not change the other programs' limits, which would restart them all.
    """
    names = ["supervisord", "agent", "envoy", "logviewer", "access"]
    names.append("model_server" if config.node.role == "serving" else "objectstore")
    return names


def limits(config: Config) -> dict[str, LogLimit]:
    """Every log's size limit (all of them, current file and backups, within USED of the budget)."""
    names = written_logs(config)
    budget = config.log.max_total_mb * (1 << 20) * USED
    weights = sum(SHARES[name] for name in names)
    return {name: LogLimit(max(MIN_FILE_BYTES, int(budget * SHARES[name] / weights / (BACKUPS + 1))),
                           BACKUPS)
            for name in names}


def rotate(path: Path, backups: int) -> None:
    """``path`` -> ``path.1`` -> ... -> ``path.<backups>`` (the oldest dropped), like supervisord."""
    for number in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{number + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


class AccessLogRotator:
    """Rotates Envoy's access log by size (the agent calls :meth:`check` ten times a second)."""

    def __init__(self, config: Config, paths: NodePaths) -> None:
        limit = limits(config).get("access")
        self.path = paths.logs / ACCESS_LOG
        self.limit = limit
        self.reopen_url = f"http://127.0.0.1:{config.envoy.admin_port}/reopen_logs"
        self.reopen_pending = False

    def check(self) -> bool:
        """Rotate when the log passed its limit; True when it did."""
        if self.limit is None:
            return False
        if self.reopen_pending:
            # Envoy did not reopen (it was restarting, its admin busy): it still writes into
            # access.log.1 until it does, or until it restarts (it then opens access.log).
            self.reopen_pending = not self._reopen()
            return False
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size <= self.limit.max_bytes:
            return False
        rotate(self.path, self.limit.backups)
        self.reopen_pending = not self._reopen()
        dropped = self._prune()
        log.info("rotated %s at %d bytes (limit %d, %d kept%s)", self.path, size, self.limit.max_bytes,
                 self.limit.backups, f"; {dropped} dropped to stay within the share" if dropped else "")
        return True

    def _prune(self) -> int:
        """Drop the oldest rotated files while they and a full current file pass the log's share.

        A file is rotated only after it passed its limit (by what Envoy wrote since the last
        check), so under a heavy load the kept files are bigger than the limit: the share of the
        budget, not the number of files, is what is kept.
        """
        share = self.limit.max_bytes * (self.limit.backups + 1)
        kept, dropped = self.limit.max_bytes, 0
        for number in range(1, self.limit.backups + 1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            try:
                size = older.stat().st_size
            except FileNotFoundError:
                continue
            kept += size
            if kept > share and number > 1:   # .1 is what Envoy may still be writing
                older.unlink()
                dropped += 1
        return dropped

    def _reopen(self) -> bool:
        code, body = get_text(self.reopen_url, timeout=5.0, method="POST")
        if code != 200:
            log.warning("Envoy did not reopen %s (HTTP %s: %s); retrying", self.path, code,
                        body[:200])
        return code == 200
