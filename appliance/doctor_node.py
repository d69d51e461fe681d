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
    from .doctor import _existing_ancestor, unwritable

    data = paths.local(config.repo.data_path)
    where = data if data.is_dir() else _existing_ancestor(data)
    error = unwritable(where, user)
    if error is None:
        what = "is writable" if where == data else f"can be created (in {where})"
        return [_ok("repo data", f"{data} {what}")]
    fix = (f"mkdir -p {data} && chown -R {user}: {data}" if user
           else f"make {data} writable for this user (chown -R $(id -un) {data}), or set repo.data.path")
    return [_problem("repo data", f"the object store's data dir {data} (repo.data.path) is not "
                     f"writable: {error.strerror}" + ("" if where == data else f" ({where} is not)"), fix)]


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


def check_metrics(config: Config, paths: NodePaths | None = None) -> list[Finding]:
    """A node with peers needs the cluster's one metrics token: with a token of its own, one
    Prometheus job, `appliance capacity` and the dashboard cannot read every node. On a running
    node (``paths``), the page answers its token."""
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
    problem = _scrape_problem(config, paths) if paths is not None else ""
    if problem:
        return [_problem("metrics", f"the scrape page /metrics on port {config.logviewer.port} "
                         f"{problem}", f"read {paths.logs / 'logviewer.log'}; a bad "
                         f"{paths.etc / 'metrics.token'}: delete it (a new one is made) or set "
                         "metrics.token")]
    return [_ok("metrics", f"scrape page /metrics on port {config.logviewer.port}")]


def _scrape_problem(config: Config, paths: NodePaths) -> str:
    """What is wrong with this node's page as a scraper sees it ('' when it answers, or when
    nothing listens: check_processes says why)."""
    import urllib.error
    import urllib.request

    from .nodemetrics import scrape_address, scrape_token

    try:
        token = scrape_token(config, paths)
    except PermissionError:
        return ""     # not root nor the service user: check_processes says so
    except (OSError, ValueError) as exc:
        return f"has no usable token: {exc}"
    # Plain HTTP: the logviewer's port takes it from this machine.
    url = f"http://{scrape_address(config.connect_address(), config.logviewer.port)}/metrics"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read(1)
        return ""
    except urllib.error.HTTPError as exc:
        return f"answered HTTP {exc.code} to the node's own token"
    except OSError:
        return ""


# ----------------------------------------------------------------------------- runtimes


#: The module each runtime needs in the release (looked up, not imported: TensorFlow takes seconds).
RUNTIME_MODULES = {"tensorflow": "tensorflow", "onnx": "onnxruntime", "openvino": "openvino"}


def check_runtimes(paths: NodePaths, config: Config) -> list[Finding]:
    """The runtimes a serving node's models may run on: installed in this release, their cache
    of converted models taking the service user's writes, and on a running node which runtime
    serves each version (what ``platform: auto`` chose, measured and refused)."""
    import importlib.util

    from modelserver.core.platforms import AUTO

    from . import runconfig
    from .doctor import service_user, unwritable
    from .errors import ApplianceError
    from .modelstatus import ModelServerClient

    if config.node.role != "serving":
        return []
    try:
        config = runconfig.read(paths).config     # with the cluster's settings, as it runs
    except ApplianceError:
        pass
    findings = []
    wanted: dict[str, list[str]] = {}
    for name in config.model.names:
        entry = config.model.settings[name]
        for runtime in entry.auto.runtimes if entry.platform == AUTO else (entry.platform,):
            wanted.setdefault(runtime, []).append(name)
    for runtime, names in sorted(wanted.items()):
        if importlib.util.find_spec(RUNTIME_MODULES[runtime]) is None:
            findings.append(_problem("runtimes", f"{runtime} is not installed in this release "
                                     f"(module {RUNTIME_MODULES[runtime]}), yet model(s) "
                                     f"{', '.join(names)} may run on it",
                                     "install the release again (its dependencies include every "
                                     "runtime), or set the models' platform without it"))
    cache = paths.runtime_cache
    if cache.is_dir():
        user = service_user(paths)
        error = unwritable(cache, user)
        if error is not None:
            findings.append(_problem("runtimes", f"the runtime cache {cache} is not writable "
                                     f"({error.strerror}): every start converts and measures the "
                                     "models again",
                                     f"chown -R {user or '<service user>'}: {cache}"))
        else:
            entries = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
            size = sum(f.stat().st_size for p in entries for f in p.rglob("*") if f.is_file())
            findings.append(_ok("runtimes", f"runtime cache {cache}: {len(entries)} entr"
                                f"{'y' if len(entries) == 1 else 'ies'}, {size / 1e6:.1f} MB of "
                                f"{config.serving.runtime_cache_bytes / 1e6:.0f} MB"))
    served = ModelServerClient.of_node(config).runtimes()
    for name in config.model.names if served is not None else ():
        platform = config.model.settings[name].platform
        for version, choice in sorted(served.get(name, {}).items()):
            line = f"model {name} version {version}: {choice.describe()}"
            if platform not in (AUTO, choice.platform):
                findings.append(_problem("runtimes", f"{line}, though its platform is {platform}",
                                         "`appliance reload` (or restart the node) to apply the "
                                         "platform"))
            else:
                findings.append(_ok("runtimes", line))
    return findings or [_ok("runtimes", "every runtime the models may use is installed")]
