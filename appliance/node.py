"""One node's lifecycle: ``up`` (render, start supervisord, wait until serving), ``down``, ``status``.

This is the composition root of the CLI's node commands: config + paths -> rendered files ->
supervisord -> readiness checks against the real model server and Envoy.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import membership, pki, portowners, render, runconfig
from modelserver.atomic import write_atomic
from modelserver.core.applied import digest
from modelserver.core.choice import Choice
from modelserver.core.platforms import has_version
from modelserver.cpus import usable_cpus
from .builtin_models.half_plus_two import NAME as HALF_PLUS_TWO
from .config import Config, NodePaths, local_store
from .envoy_admin import read_cluster_view, unhealthy_of, xds_rejected, xds_taken, xds_updates
from .errors import ApplianceError, SupervisorError
from .localhttp import get_text
from .modelstatus import ModelServerClient
from .supervision import ProcessInfo, Supervisor, pid_alive

log = logging.getLogger(__name__)

#: Left in the run dir by ``appliance down``: the foreground ``up`` sees a requested stop.
STOP_REQUESTED = "stop-requested"
#: How often a foreground ``up`` looks for a program supervisord gave up on (FATAL).
SUPERVISE_SECONDS = 2.0


def running_roots(exclude: Path) -> list[Path]:
    """Node roots with a live supervisord among the usual places: the default root /, ./.node
    (where scripts/run.sh puts it) and the checkout's .node -- what a forgotten --root or
    APPLIANCE_ROOT most likely meant."""
    checkout = Path(__file__).resolve().parents[1]
    found: list[Path] = []
    for root in (Path("/"), Path.cwd() / ".node", checkout / ".node"):
        root = root.resolve()
        if root == exclude.resolve() or root in found:
            continue
        try:
            pid = int((NodePaths(root).run / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            found.append(root)
    return found


class Node:
    """A node rooted at ``paths.root`` with its validated config."""

    def __init__(self, config: Config, paths: NodePaths, config_file: Path | None = None,
                 overrides: list[str] | None = None) -> None:
        self.config = config
        self.paths = paths
        self.config_file = config_file
        self.overrides = list(overrides or [])
        self.supervisor = Supervisor(render.supervisor_socket(paths))
        # Envoy's LDS/CDS load and refusal counts before this change (a refusal since is this
        # change's), and which of the two it must load anew (swapped in without a restart)
        # before the change is applied.
        self._xds_before: dict[str, int] = {}
        self._xds_pending: set[str] = set()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_run_dir(cls, paths: NodePaths) -> "Node":
        """The node as last started or changed (its running config, :mod:`appliance.runconfig`)."""
        try:
            running = runconfig.read(paths)
        except runconfig.NotStarted as exc:
            elsewhere = running_roots(exclude=paths.root)
            hint = (f"; a node is running under {elsewhere[0]}: pass `--root {elsewhere[0]}` or "
                    f"`export APPLIANCE_ROOT={elsewhere[0]}`" if elsewhere else
                    "; run `appliance up` first")
            raise ApplianceError(f"{exc}{hint}") from None
        return cls(running.config, paths, running.config_file, list(running.overrides))

    # ------------------------------------------------------------------ up

    def check_models(self) -> None:
        """Every named model must have a version in the local store before we start."""
        if self.config.s3.type != "none":
            return   # the agent fetches them from the repository once the node runs
        store = local_store(self.config, self.paths)
        missing = [name for name in self.config.model.names
                   if not has_version(store / name)]
        if missing:
            raise ApplianceError(
                f"no version of model(s) {', '.join(missing)} in {store}: put a SavedModel in "
                f"{store}/<name>/<version>/ (e.g. `appliance builtin-models` for the built-in ones) "
                "or change model.name")

    def render(self) -> list[Path]:
        """Issue missing or stale certificates, render, validate and atomically install the run
        dir; return the files that changed (certificates included)."""
        issued = pki.ensure(self.config, self.paths)
        for path in issued:
            log.info("wrote %s", path)
        files = render.render_all(self.config, self.paths)
        changed = issued + render.install(files, self.paths)
        if runconfig.publish(self.paths, self.config, self.config_file, self.overrides):
            changed.append(runconfig.path(self.paths))
        return changed

    def ensure_logviewer_secrets(self, progress: Callable[[str], None] = print) -> None:
        """The log browser's password, and the metrics page's token (served on the logviewer's
        port), so the operator finds it where `up` says it is before anything has scraped."""
        self.ensure_logviewer_password(progress)
        if self.config.logviewer.enabled:
            from .nodemetrics import scrape_token

            scrape_token(self.config, self.paths)

    def ensure_logviewer_password(self, progress: Callable[[str], None] = print,
                                  terminal: bool | None = None) -> None:
        """First start: generate the log browser's password and store its hash.

        The password goes to a person, never to a log: printed once when stdout is a terminal
        (``terminal``, default ``sys.stdout.isatty()``), else -- under systemd stdout is the
        journal -- written to a 0600 file whose path is printed instead.
        """
        if not self.config.logviewer.enabled:
            return
        from logviewer import credentials

        password = credentials.ensure_password(self.paths.etc)
        if not password:
            return
        if terminal is None:
            terminal = sys.stdout.isatty()
        if terminal:
            progress(f"logviewer password (shown once, only its hash is kept): {password}")
        else:
            path = credentials.write_initial_password(self.paths.etc, password)
            progress(f"logviewer password: not printed (this output may be a log); it is in {path} "
                     "(mode 0600: root and the service user only)")
            progress(f"  read it with `sudo cat {path}`, log in, then delete it: `sudo rm {path}`")
        progress(f"  log in at {self.logviewer_url()} ; "
                 "`appliance logviewer-password` sets a new one")

    def logviewer_url(self) -> str:
        """Plain HTTP reaches the log browser from this machine only (envoy/lds.yaml.j2)."""
        host = self.config.connect_address()
        scheme = "http" if host.startswith("127.") else "https"
        return f"{scheme}://{host}:{self.config.logviewer.port}/"

    def supervisord_cmd(self, foreground: bool) -> list[str]:
        cmd = [render.find_binary("supervisord"), "-c", str(self.paths.run / "supervisord.conf")]
        # In the foreground, -s keeps supervisord's log in supervisord.log only: the terminal
        # shows `up`'s own progress and its closing lines, not process state changes.
        return cmd + ["-n", "-s"] if foreground else cmd

    def up(self, foreground: bool = False, timeout: float | None = None,
           progress: Callable[[str], None] = print) -> None:
        """Start the node (or apply a changed config to a running one) and wait until it serves.

        ``timeout`` defaults to ``startup.timeout.seconds``. In the foreground a node that is not
        ready by then is stopped and this raises: under systemd the unit fails (and restarts)
        instead of staying "active" while nothing serves.
        """
        if timeout is None:
            timeout = float(self.config.startup.timeout_seconds)
        if self.supervisor.is_running():
            from . import control

            control.apply(self.paths, self.overrides, progress, config_file=self.config_file,
                          timeout=timeout)
            self.show_next_steps(progress)
            return
        if self.config.node.role == "serving":
            self.check_models()
        self.render()
        self.ensure_logviewer_secrets(progress)
        if foreground:
            self._run_foreground(timeout, progress)
            return
        proc = subprocess.run(self.supervisord_cmd(False), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SupervisorError(f"supervisord failed to start: {proc.stderr.strip() or proc.stdout}")
        self.wait_ready(timeout, progress)
        self.show_next_steps(progress)

    def show_next_steps(self, progress: Callable[[str], None] = print) -> None:
        """The closing lines of `up`: a request to try, and where the log browser and its password are."""
        host = self.config.connect_address()
        if self.config.node.role == "serving":
            model = self.config.model.default
            base = f"http://{host}:{self.config.http_port}/v1/models/{model}"
            edge = pki.edge_files(self.config, self.paths)
            if not self.config.tls.plaintext:   # TLS only: the https form, trusting the edge cert
                base = f"--cacert {edge.cert} https://{host}:{self.config.http_port}/v1/models/{model}"
            if model == HALF_PLUS_TWO:
                progress(f"try:  curl -d '{{\"instances\": [1.0, 2.0, 5.0]}}' -X POST {base}:predict")
            else:
                progress(f"try:  curl {base}/metadata    (its signature: what :predict takes)")
            progress(f"TLS on the same ports: https://{host}:{self.config.http_port} and gRPC "
                     f"{host}:{self.config.grpc_port} with {edge.cert}")
        for report in pki.reports(self.config, self.paths):
            progress(report.text())
        left_out = membership.peers_left_out(self.config)
        if left_out:
            progress("WARNING: " + membership.no_ca_warning(self.config, left_out))
        if self.config.logviewer.enabled:
            from logviewer import credentials

            initial = credentials.initial_password_file(self.paths.etc)
            where = (f"in {initial} (read it, log in, then delete it)" if initial.exists() else
                     "the one printed at the first start")
            progress(f"logs: {self.logviewer_url()}  password: {where}; "
                     f"`appliance --root {self.paths.root} logviewer-password` sets a new one")
            token = ("metrics.token" if self.config.metrics.token else
                     str(self.paths.etc / "metrics.token"))
            progress(f"metrics: {self.logviewer_url()}metrics  (Authorization: Bearer <{token}>); "
                     f"dashboard: {self.logviewer_url()}dashboard")

    def apply_live(self, progress: Callable[[str], None] = print) -> None:
        """Bring the running node to this config: render and install, reach the processes that
        need the change (and only those); :meth:`wait_ready` then waits until it serves. Called
        by :mod:`appliance.control` only, which makes it one change at a time."""
        if not self.supervisor.is_running():
            raise ApplianceError(f"the node under {self.paths.root} is not running: "
                                 "`appliance up` starts it")
        if self.config.node.role == "serving":
            self.check_models()
        self._xds_before = xds_updates(self.config.envoy.admin_port)
        changed = self.render()
        self.ensure_logviewer_secrets(progress)
        self._apply_changes(changed, progress)

    def _apply_changes(self, changed: list[Path], progress: Callable[[str], None]) -> None:
        """Touch only what changed: EDS and models.config are picked up live (no restart)."""
        names = {p.name for p in changed}
        restarted: set[str] = set()
        if "supervisord.conf" in names:
            added, modified, removed = self.supervisor.update()
            restarted = set(added) | set(modified)
            parts = [f"{label} {', '.join(items)}" for label, items in
                     (("started", added), ("restarted", modified), ("stopped", removed)) if items]
            progress("supervisord.conf changed: " + ("; ".join(parts) or "no program changed"))
        node_certs = pki.node_files(self.paths)
        certificates = names & {p.name for p in (node_certs.ca, node_certs.cert,
                                                 pki.edge_files(self.config, self.paths).cert)}
        if certificates and "envoy" not in restarted and not {"lds.yaml", "cds.yaml"} <= names:
            # Envoy reads certificate files when it loads a listener or cluster, not after: new
            # files under unchanged listeners and clusters are only read by a new Envoy.
            progress(f"{', '.join(sorted(certificates))} changed: restarting envoy")
            self.supervisor.restart("envoy")
        elif "envoy.yaml" in names and "envoy" not in restarted:
            # Only what Envoy reads at start: its admin port or node id (node.address).
            progress("envoy.yaml (Envoy's bootstrap: admin port, node id) changed: restarting envoy")
            self.supervisor.restart("envoy")
        elif names & {"lds.yaml", "rds.yaml", "cds.yaml"} and "envoy" not in restarted:
            progress("Envoy's listeners, routes or clusters changed: Envoy swaps them in (no restart)")
            self._xds_pending = {kind for kind in ("lds", "rds", "cds") if f"{kind}.yaml" in names}
        if render.MONITORING_CONFIG in names and "model_server" not in restarted:
            # The model server reads its Prometheus page's path at start only.
            progress("monitoring.config (metrics.path) changed: restarting model_server")
            self.supervisor.restart("model_server")
        if names & {render.MODELS_CONFIG, render.MODEL_SETTINGS} and "model_server" not in restarted:
            changed_files = " and ".join(sorted(names & {render.MODELS_CONFIG, render.MODEL_SETTINGS}))
            progress(f"{changed_files} changed: the model server re-reads it (no restart)")
        if any(name.startswith("eds_") for name in names):
            progress("cluster membership changed: Envoy swapped its endpoints (no restart)")
        if runconfig.path(self.paths).name in names:
            progress("running config changed: the agent and the logviewer follow it (no restart)")
        if not names:
            progress("already up; nothing changed")

    def _run_foreground(self, timeout: float, progress: Callable[[str], None]) -> None:
        """supervisord as our child, and we its supervisor: what systemd sees is the truth.

        Ctrl-C or SIGTERM stops supervisord and everything it started (a clean stop, exit 0).
        Anything else that ends the node raises, so ``up`` exits non-zero and systemd's
        ``Restart=on-failure`` restarts the unit: supervisord dying (its orphaned children are
        stopped too: we are their subreaper, they never run on unsupervised), a program that
        reached FATAL (supervisord gave up on it), or a node not ready within ``timeout``.
        ``appliance down`` is a requested stop as well (it leaves :data:`STOP_REQUESTED`).
        """
        (self.paths.run / STOP_REQUESTED).unlink(missing_ok=True)
        _become_subreaper()
        proc = subprocess.Popen(self.supervisord_cmd(True), preexec_fn=_die_with_parent)
        asked: list[str] = []

        def stop(reason: str) -> None:
            asked.append(reason)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, lambda *_: stop("SIGTERM"))
        failure = ""
        try:
            try:
                self.wait_ready(timeout, progress, supervisord=proc)
                progress(f"serving; press Ctrl-C to stop every process (log: {self.paths.logs}/supervisord.log)")
                self.show_next_steps(progress)
                failure = self._supervise(proc)
            except ApplianceError as exc:
                failure = "" if asked else str(exc)
        except KeyboardInterrupt:
            progress("stopping ...")
            stop("Ctrl-C")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            orphans = _stop_orphans()
            signal.signal(signal.SIGTERM, previous)
        if orphans:
            progress(f"stopped {len(orphans)} process(es) supervisord left behind: "
                     f"{', '.join(map(str, orphans))}")
        progress(f"stopped (supervisord exit code {proc.returncode})")
        if failure and not asked:
            raise SupervisorError(failure)

    def _supervise(self, proc: subprocess.Popen) -> str:
        """Watch a serving node until supervisord exits; return why, '' for a requested stop."""
        while True:
            try:
                code = proc.wait(SUPERVISE_SECONDS)
            except subprocess.TimeoutExpired:
                try:
                    self._raise_if_failed()
                except SupervisorError as exc:
                    return f"{exc}\nstopping the node: supervisord gave up on that program"
                continue
            marker = self.paths.run / STOP_REQUESTED
            if marker.exists():
                marker.unlink(missing_ok=True)
                return ""
            return (f"supervisord exited on its own (exit code {code}); every process it ran is "
                    f"stopped; see {self.paths.logs}/supervisord.log")

    # ------------------------------------------------------------------ readiness

    def wait_ready(self, timeout: float, progress: Callable[[str], None] = print,
                   supervisord: subprocess.Popen | None = None) -> None:
        """Block until each model serves and a request through Envoy answers; fail fast on FATAL."""
        deadline = time.monotonic() + timeout
        shown: set[str] = set()

        def step(label: str, check: Callable[[], bool]) -> None:
            while True:
                if supervisord is not None and supervisord.poll() is not None:
                    raise SupervisorError(f"supervisord exited with code {supervisord.returncode}; "
                                          f"see {self.paths.logs}/supervisord.log")
                if check():
                    progress(f"  ok  {label}")
                    return
                if label not in shown:
                    progress(f"  ... {label}")
                    shown.add(label)
                self._raise_if_failed()
                self._raise_if_envoy_refused()
                if time.monotonic() > deadline:
                    raise ApplianceError(f"timed out after {timeout:.0f}s waiting for {label}; "
                                         f"logs are in {self.paths.logs}")
                time.sleep(0.25)

        step("supervisord", self.supervisor.is_running)
        host = self.config.connect_address()
        if self.config.node.role == "serving":
            server = ModelServerClient.of_node(self.config)
            step("the model server follows models.config and model-settings.json",
                 lambda: self._follows_rendered(server))
            for name in self.config.model.names:
                step(f"model {name} AVAILABLE on the model server", lambda n=name: server.available(n))
        admin = f"http://127.0.0.1:{self.config.envoy.admin_port}/ready"
        step("envoy ready", lambda: get_text(admin)[0] == 200)
        if self._xds_pending:   # until then Envoy still serves with its previous listeners
            step("Envoy loaded the new " + " and ".join(
                     {"lds": "listeners", "rds": "routes", "cds": "clusters"}[kind] for kind in sorted(self._xds_pending, reverse=True)),
                 lambda: xds_taken(self._xds_before, xds_updates(self.config.envoy.admin_port), self._xds_pending))
        if self.config.node.role == "repo":
            step("object store with its bucket", self._objectstore_ready)
            # Anonymous S3 gets 403 (AccessDenied): the store answers through Envoy.
            s3 = f"http://{host}:{self.config.repo.port}/"
            step(f"S3 API through Envoy on port {self.config.repo.port}",
                 lambda: get_text(s3)[0] == 403)
            return
        # tls.plaintext false: asked over TLS, as any client must. 401: routed to a model server
        # that wants an API key; 429: the node's rate limit.
        scheme = "http" if self.config.tls.plaintext else "https"
        edge = pki.edge_files(self.config, self.paths)
        cafile = edge.cert if edge.self_signed else None
        front = f"{scheme}://{host}:{self.config.http_port}/v1/models/{self.config.model.default}"
        step(f"REST through Envoy on port {self.config.http_port}",
             lambda: get_text(front, cafile=cafile)[0] in (200, 401, 429))
        if self.config.node.role == "serving" and host in membership.members(self.config):
            # Envoy health-checks each host once a second: the node is in rotation (and `up`
            # done) only once its own Envoy routes to its own model server, REST and gRPC.
            step("this node's model server in its Envoy's rotation",
                 lambda: not unhealthy_of(self.config.envoy.admin_port, [host]))
        if self.config.logviewer.enabled:
            viewer = f"http://{host}:{self.config.logviewer.port}/healthz"
            step(f"logviewer on port {self.config.logviewer.port}", lambda: get_text(viewer)[0] == 200)

    def _follows_rendered(self, server: ModelServerClient) -> bool:
        """True once the model server follows the files this node rendered; raises when it
        refused them (e.g. TF Serving's "Illegal to change a model's platform")."""
        follows, error = follows_rendered(server, self.paths)
        if error:
            raise ApplianceError(f"the model server did not take the new config: {error}")
        return follows

    def _objectstore_ready(self) -> bool:
        """The running object store process wrote its ready marker (the bucket exists)."""
        from .objectstore import READY_MARKER

        try:
            marker = int((self.paths.run / READY_MARKER).read_text().strip())
        except (OSError, ValueError):
            return False
        return any(p.name == "objectstore" and p.state == "RUNNING" and p.pid == marker
                   for p in self.supervisor.processes())

    def _raise_if_failed(self) -> None:
        try:
            infos = self.supervisor.processes()
        except SupervisorError:
            return
        for info in infos:
            if info.state == "FATAL":
                raise SupervisorError(f"{info.name} failed to start ({info.description}); last "
                                      f"lines of {info.logfile}:\n{_tail(Path(info.logfile))}")

    def _raise_if_envoy_refused(self) -> None:
        """A listener Envoy cannot open (its port taken) does not stop Envoy: it keeps its
        previous listeners (none at a first start), counts the refusal and logs why."""
        if xds_rejected(xds_updates(self.config.envoy.admin_port)) > xds_rejected(self._xds_before):
            log_file = self.paths.logs / "envoy.log"
            raise SupervisorError(f"envoy failed to start its listeners or clusters (it refused "
                                  f"them); last lines of {log_file}:\n{_tail(log_file)}")

    # ------------------------------------------------------------------ down and status

    def down(self, progress: Callable[[str], None] = print) -> None:
        if not self.supervisor.is_running():
            progress("not running")
            return
        # A foreground `up` (the systemd unit) then exits 0: a stop asked for, not a failure.
        write_atomic(self.paths.run / STOP_REQUESTED, f"{self.supervisor.pid()}\n")
        self.supervisor.shutdown()
        progress("stopped")

    def status(self) -> "NodeStatus":
        cpus = usable_cpus()
        status = NodeStatus(root=str(self.paths.root), role=self.config.node.role, cpus=cpus,
                            envoy_workers=self.config.envoy.concurrency or cpus,
                            model_server_threads=self.config.serving.num_threads or cpus)
        try:
            status.processes = self.supervisor.processes()
            status.supervisord = "RUNNING"
        except SupervisorError:
            status.supervisord = "STOPPED"
            return status
        _running_sizing(status)
        if self.config.node.role == "serving":
            from .agent.state import version_notes

            server = ModelServerClient.of_node(self.config)
            store = local_store(self.config, self.paths)
            runtimes = server.runtimes() or {}
            for name in self.config.model.names:
                answer = server.status(name)
                notes = version_notes(self.paths, store, name)
                choices = runtimes.get(name, {})
                if answer.reported:
                    versions = [{"version": v["version"], "state": v["state"],
                                 "error": v["status"].get("error_message", ""),
                                 "note": notes.pop(int(v["version"]), ""),
                                 "runtime": _runtime(choices.get(int(v["version"])))}
                                for v in answer.versions]
                else:
                    versions = [{"version": "-", "state": "UNREACHABLE" if answer.code == 0
                                 else f"HTTP {answer.code}", "error": answer.error[:200], "note": ""}]
                # Refused versions never reach the model server; quarantined ones it has not
                # reported yet (it is restarting): shown all the same.
                versions += [{"version": str(n), "state": "REFUSED" if note.startswith("refused")
                              else "END", "error": "", "note": note}
                             for n, note in sorted(notes.items(), reverse=True)]
                status.models[name] = versions
        status.certificates = [r.as_dict() | {"text": r.text()}
                               for r in pki.reports(self.config, self.paths)]
        left_out = membership.peers_left_out(self.config)
        if left_out:
            status.warnings.append(membership.no_ca_warning(self.config, left_out))
        why, clusters = read_cluster_view(self.config.envoy.admin_port)
        status.envoy = why
        for cluster in clusters:
            for host in cluster.hosts:
                status.upstreams.append({
                    "cluster": cluster.name, "node": host.node, "address": host.address,
                    "health": host.health,
                    "flags": host.flags, "requests": host.stats.get("rq_total", 0),
                    "errors": host.stats.get("rq_error", 0)})
        return status


def envoy_worker_threads(pid: int) -> int:
    """How many worker threads (``wrk:worker_N``) the Envoy process ``pid`` runs."""
    return sum(1 for comm in Path(f"/proc/{pid}/task").glob("*/comm") if comm.read_text().startswith("wrk:worker"))


def _running_sizing(status: "NodeStatus") -> None:
    """The sizing the running processes have, in place of what this command would render: a
    node started pinned or under a CPU quota, or before a change of its settings, runs with its
    own (Envoy's ``wrk:worker_N`` threads, the model server's ``--rest_api_num_threads``)."""
    pids = {p.name: p.pid for p in status.processes if p.state == "RUNNING" and p.pid}
    try:
        if "envoy" in pids:
            status.envoy_workers = envoy_worker_threads(pids["envoy"])
        if "model_server" in pids:
            args = Path(f"/proc/{pids['model_server']}/cmdline").read_bytes().split(b"\0")
            threads = [a.split(b"=", 1)[1] for a in args if a.startswith(b"--rest_api_num_threads=")]
            if threads and int(threads[-1]) > 0:
                status.model_server_threads = int(threads[-1])
        if pids:
            status.cpus = usable_cpus(pids.get("model_server") or pids.get("envoy"))
    except (OSError, ValueError):    # a process that just exited: the rendered sizing stays
        pass


@dataclass
class NodeStatus:
    root: str
    role: str
    supervisord: str = "UNKNOWN"
    processes: list[ProcessInfo] = field(default_factory=list)
    models: dict[str, list[dict]] = field(default_factory=dict)
    cpus: int = 0
    envoy_workers: int = 0
    model_server_threads: int = 0
    envoy: str = ""
    upstreams: list[dict] = field(default_factory=list)
    certificates: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"root": self.root, "role": self.role, "supervisord": self.supervisord,
                "sizing": {"cpus": self.cpus, "envoy_workers": self.envoy_workers,
                           "model_server_threads": self.model_server_threads},
                "envoy": self.envoy, "upstreams": self.upstreams, "certificates": self.certificates,
                "warnings": self.warnings,
                "processes": [{"name": p.name, "state": p.state, "pid": p.pid,
                               "uptime_seconds": p.uptime_seconds} for p in self.processes],
                "models": self.models}

    def text(self) -> str:
        lines = [f"node root {self.root} (role {self.role}), supervisord {self.supervisord}",
                 f"  sizing: {self.cpus} CPUs -> {self.envoy_workers} Envoy workers, "
                 f"{self.model_server_threads} model server threads"]
        if self.processes:
            lines.append(f"  {'PROCESS':<14}{'STATE':<10}{'PID':>8}  UPTIME")
            for p in self.processes:
                lines.append(f"  {p.name:<14}{p.state:<10}{p.pid or '-':>8}  "
                             f"{_duration(p.uptime_seconds) if p.uptime_seconds else '-'}")
        if self.models:
            lines.append(f"  {'MODEL':<32}{'VERSION':>9}  STATE")
            for name, versions in self.models.items():
                for v in versions:
                    error = f"  ({v['error']})" if v["error"] else ""
                    if v.get("note"):
                        error = f"  {v['note']}"
                    lines.append(f"  {name:<32}{v['version']:>9}  {v['state']}{error}")
                    if v.get("runtime"):
                        lines.append(f"  {'':<32}{'':>9}  runtime: {v['runtime']['line']}")
        if self.upstreams:
            lines.append(f"  {'SERVING NODE (as Envoy sees it)':<34}{'CLUSTER':<20}{'HEALTH':<10}"
                         f"{'REQUESTS':>9}  FLAGS")
            for up in self.upstreams:
                # This node's own model server is reached on loopback, a peer on cluster.port.
                where = up["node"] + ("" if up["address"].startswith(up["node"] + ":")
                                      else f" ({up['address']})")
                lines.append(f"  {where:<34}{up['cluster']:<20}{up['health']:<10}"
                             f"{up['requests']:>9}  {', '.join(up['flags'])}")
        elif self.envoy and self.envoy != "ok":
            lines.append(f"  envoy: {self.envoy}")
        lines += [f"  {cert['text']}" for cert in self.certificates]
        lines += [f"  WARNING: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def _runtime(choice: Choice | None) -> dict | None:
    """A version's runtime for ``status``: the choice (what ``--json`` gives) and its one line."""
    return None if choice is None else {**choice.to_json(), "line": choice.describe()}


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _die_with_parent() -> None:
    """In supervisord before exec: SIGTERM it when ``up`` dies (even by SIGKILL)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _become_subreaper() -> None:
    """Orphans of supervisord's tree become our children (not init's), so we can stop them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _stop_orphans(grace: float = 10.0) -> list[int]:
    """Stop and reap every child left after supervisord exited (its programs, if it died).

    supervisord puts each program in its own process group, so the whole group gets SIGTERM,
    then SIGKILL after ``grace`` seconds.
    """
    me, own_group = os.getpid(), os.getpgrp()
    orphans = [pid for pid, parent in portowners.parents().items() if parent == me]
    left = orphans
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:   # never a reaped one: its number may be another process's by now
            try:
                group = os.getpgid(pid)
                if group != own_group:
                    os.killpg(group, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while (left := _reap(left)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not left:
            break
    return orphans


def _reap(pids: list[int]) -> list[int]:
    """Reap those of ``pids`` that exited; return the ones still running."""
    running = []
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done == 0:
            running.append(pid)
    return running


def _tail(path: Path, size: int = 3000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def follows_rendered(server: ModelServerClient, paths: NodePaths) -> tuple[bool, str]:
    """(the model server follows the models.config, model-settings.json and api-keys.json rendered under
    ``paths``, the error with which it refused them, if any). Not answering: (False, "")."""
    def read(name: str) -> bytes | None:
        try:
            return (paths.run / name).read_bytes()
        except FileNotFoundError:
            return None

    answer = server.applied_config()
    if answer is None:
        return False, ""
    expected = {"model_config_file": digest(read(render.MODELS_CONFIG)),
                "model_settings_file": digest(read(render.MODEL_SETTINGS)),
                "api_keys_file": digest(read(render.API_KEYS))}
    if all(answer.get(key) == value for key, value in expected.items()):
        return True, ""
    return False, answer.get("error") or ""
