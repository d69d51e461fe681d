"""The doctor's checks of what runs around the node: crash loops, the clock, the unit, the repo data.

Split from :mod:`appliance.doctor` (config, binaries, ports, storage) by role: these read the
running node's history (supervisord's log), the S3 server's clock and systemd. Each returns
:class:`~appliance.doctor.Finding` s like the others; none changes anything.
"""

from __future__ import annotations

import email.utils
import http.client
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

from .config import Config, NodePaths
from .doctor import Finding, _ok, _problem

#: A program that exited unexpectedly within this window is in trouble, whatever its state now:
#: a crash loop shows RUNNING between two crashes, and the doctor must not flap with it.
RECENT_EXIT_SECONDS = 300
#: S3 refuses a signature made more than 15 minutes off the server's clock; warn well before.
MAX_CLOCK_SKEW_SECONDS = 300
TIME_SYNC_FIX = ("turn on time synchronization: `timedatectl set-ntp true` (systemd-timesyncd), or "
                 "install chrony; `timedatectl` shows whether the clock is synchronized")
_EXIT_LINE = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \w+ exited: (\S+) \((.*); not expected\)$")
_TAIL_BYTES = 256 * 1024


# ----------------------------------------------------------------------------- crash loops


def recent_exits(log: Path, now: float | None = None,
                 window: float = RECENT_EXIT_SECONDS) -> dict[str, list[tuple[float, str]]]:
    """Unexpected exits in supervisord's log within ``window`` seconds: name -> [(when, why)].

    Only the log's last 256 KiB are read (by offset, never the whole file).
    """
    now = time.time() if now is None else now
    try:
        with log.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            lines = handle.read().splitlines()
    except OSError:
        return {}
    exits: dict[str, list[tuple[float, str]]] = {}
    for line in lines:
        match = _EXIT_LINE.match(line)
        if not match:
            continue
        try:
            when = time.mktime(time.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        if now - when <= window:
            exits.setdefault(match.group(2).decode(), []).append(
                (when, match.group(3).decode("utf-8", "replace")))
    return exits


def crash_loop_findings(paths: NodePaths, running: dict[str, str]) -> list[Finding]:
    """One problem per program that exited unexpectedly lately (``running``: name -> its log)."""
    findings = []
    for name, exits in sorted(recent_exits(paths.logs / "supervisord.log").items()):
        if name not in running:
            continue
        when, why = exits[-1]
        findings.append(_problem(
            "processes", f"{name} exited unexpectedly {len(exits)} time(s) in the last "
            f"{RECENT_EXIT_SECONDS // 60} minutes (last {int(time.time() - when)}s ago: {why}); "
            "supervisord restarts it",
            f"read {running[name]}, fix the cause, then `appliance up` (this clears "
            f"{RECENT_EXIT_SECONDS // 60} minutes after the last crash)"))
    return findings


# ----------------------------------------------------------------------------- clock


def server_date(endpoint: str, timeout: float = 5.0) -> float | None:
    """The epoch of an HTTP server's ``Date`` header (HEAD /), or None when there is none."""
    url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not url.hostname:
        return None
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("HEAD", "/")
        date = conn.getresponse().getheader("Date")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    try:
        return email.utils.parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError):
        return None


def check_clock(endpoint: str, timeout: float = 5.0, now: float | None = None) -> list[Finding]:
    """This machine's clock against the S3 server's (a signed request fails past 15 minutes)."""
    theirs = server_date(endpoint, timeout)
    if theirs is None:
        return []       # unreachable: check_repository says so
    skew = (time.time() if now is None else now) - theirs
    if abs(skew) <= MAX_CLOCK_SKEW_SECONDS:
        return [_ok("clock", f"within {max(1, round(abs(skew)))}s of the object store's ({endpoint})")]
    return [_problem("clock", f"this machine's clock is {abs(skew):.0f}s "
                     f"{'ahead of' if skew > 0 else 'behind'} the object store's ({endpoint}); S3 "
                     "refuses requests signed more than 15 minutes off", TIME_SYNC_FIX)]


# ----------------------------------------------------------------------------- systemd


def check_unit(paths: NodePaths, unit: str = "appliance.service") -> list[Finding]:
    """On a machine booted with systemd and a node installed at /: the unit enabled and not failed."""
    if str(paths.root) != "/" or not Path("/run/systemd/system").is_dir() or not shutil.which("systemctl"):
        return []
    if not Path("/etc/systemd/system", unit).exists():
        return [_problem("systemd", f"{unit} is not installed", "re-run scripts/install-node.sh "
                         "(it installs and enables the unit)")]

    def systemctl(*args: str) -> str:
        result = subprocess.run(["systemctl", *args, unit], capture_output=True, text=True, timeout=30)
        return result.stdout.strip()

    findings = []
    if systemctl("is-enabled") != "enabled":
        findings.append(_problem("systemd", f"{unit} is not enabled: the node does not start at boot",
                                 f"systemctl enable --now {unit}"))
    state = systemctl("is-active")
    if state == "failed":
        findings.append(_problem("systemd", f"{unit} failed", f"`journalctl -u {unit} -n 50` says why; "
                                 f"fix it, then `systemctl restart {unit}`"))
    if not findings:
        findings.append(_ok("systemd", f"{unit} enabled, {state}"))
    return findings


# ----------------------------------------------------------------------------- repo data


def check_repo_data(paths: NodePaths, config: Config, user: str) -> list[Finding]:
    """The object store's data dir (repo.data.path) exists or can be made, writable by the node."""
    from .doctor import _existing_ancestor, _user_can_write, _write_probe

    data = paths.local(config.repo.data_path)
    where = data if data.is_dir() else _existing_ancestor(data)
    owner = f"the service user {user}" if user else "this user"
    if user and os.geteuid() == 0:
        writable = _user_can_write(where, user)
    else:
        writable = _write_probe(where) is None
    if writable:
        what = "is writable" if where == data else f"can be created (in {where})"
        return [_ok("repo data", f"{data} {what}")]
    fix = (f"mkdir -p {data} && chown -R {user}: {data}" if user
           else f"make {data} writable for this user (chown -R $(id -un) {data}), or set repo.data.path")
    return [_problem("repo data", f"the object store's data dir {data} (repo.data.path) is not "
                     f"writable by {owner}" + ("" if where == data else f" ({where} is not)"), fix)]


# ----------------------------------------------------------------------------- releases


def check_releases(paths: NodePaths, pids: set[int]) -> list[Finding]:
    """On an installed node (releases side by side): ``current`` names a complete release and
    every running process of the node runs that release, so an upgrade or rollback that stopped
    half way is said (and how to finish it)."""
    from .releases import Releases

    releases = Releases(paths.root)
    if not releases.dir.is_dir():
        return []     # a checkout or a pip install: no releases to check
    current = releases.current()
    if current is None or not (releases.dir / current / ".appliance-release").is_file():
        known = ", ".join(releases.installed()) or "none"
        return [_problem("releases", f"{releases.home}/current names no complete release "
                         f"({current or 'missing'}; installed: {known})",
                         "`appliance upgrade RELEASE` with one of the installed releases, or "
                         "reinstall with scripts/install-node.sh")]
    running = {}
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for arg in argv[:2]:
            if arg.startswith(f"{releases.dir}/"):
                running[pid] = Path(arg).relative_to(releases.dir).parts[0]
    stale = {pid: release for pid, release in running.items() if release != current}
    if stale:
        listed = ", ".join(f"pid {pid} runs {release}" for pid, release in sorted(stale.items()))
        return [_problem("releases", f"the node runs another release than current ({current}): "
                         f"{listed}", f"finish the switch: `appliance upgrade {current}` (stops "
                         "the node, starts it from the current release)")]
    previous = releases.previous()
    return [_ok("releases", f"current release {current}" + (f", previous {previous}" if previous else "")
                + (", every process runs it" if running else ""))]


# ----------------------------------------------------------------------------- applied settings


def check_applied(paths: NodePaths, config: Config) -> list[Finding]:
    """A running serving node applies what its config says: the config file has no edit that
    was not applied (`appliance reload`), and the model server follows the models.config and
    model-settings.json the node rendered (else it refused them, and says why)."""
    from . import runconfig
    from .errors import ApplianceError
    from .modelstatus import ModelServerClient
    from .node import follows_rendered

    try:
        running = runconfig.read(paths)
    except ApplianceError:
        return []     # never started here: nothing applied yet
    findings = []
    try:
        edited = running.reread(paths) != running.config
    except ApplianceError:
        edited = True     # check_config says what is wrong with the file
    if edited:
        findings.append(_problem("settings", "the config file changed since the node applied it "
                                 "(the running node still uses the settings it had)",
                                 "`appliance reload` applies it (check it first: `appliance doctor`)"))
    if config.node.role == "serving":
        follows, error = follows_rendered(ModelServerClient.of_node(running.config), paths)
        if error:
            findings.append(_problem("settings", f"the model server refused the node's model settings: "
                                     f"{error}", "fix the models.* settings named in the error, then "
                                     "`appliance reload`"))
        elif follows:
            findings.append(_ok("settings", "the model server follows the node's models.config and "
                                "model-settings.json"))
    if not findings:
        findings.append(_ok("settings", "the running node uses the config file as it is"))
    return findings


# ----------------------------------------------------------------------------- metrics


def check_metrics(config: Config) -> list[Finding]:
    """A node with peers needs the cluster's one metrics token: with a token of its own, one
    Prometheus job, `appliance capacity` and the dashboard cannot read every node."""
    from .membership import is_self, members

    if not config.logviewer.enabled:
        return [_ok("metrics", "no scrape page: it is /metrics on the logviewer's port "
                               "(logviewer.enabled is false)")]
    peers = config.cluster.dns or [a for a in members(config) if not is_self(config, a)]
    if peers and not config.metrics.token:
        return [_problem("metrics", "this node scrapes with a token of its own (metrics.token is "
                         "empty) while it has peers: Prometheus and `appliance capacity` cannot "
                         "read every node with one token",
                         "set metrics.token to the same value on every node "
                         "(e.g. `openssl rand -hex 32`)")]
    return [_ok("metrics", f"scrape page /metrics on port {config.logviewer.port}")]
