"""``appliance models push|ls|add|remove|set``, ``sync --once``, ``agent`` and ``objectstore``.

Kept out of cli.py so the node commands stay small: cli.py calls :func:`add_parsers` and hands
the commands named in :data:`COMMANDS` to :func:`dispatch`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from modelserver.core.platforms import detect_platform, is_version_name, version_dirs

from .config import Config, NodePaths, local_store, model_name_problem
from .errors import SourceError
from .modelstatus import ModelServerClient

log = logging.getLogger(__name__)

COMMANDS = ("models", "sync", "agent", "objectstore")
EDITS = ("add", "remove", "set")   # models commands that edit the config file


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def overrides(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set s3.endpoint=http://repo:8333")
        return p

    models = sub.add_parser("models", help="serve models (add, remove, set their settings); push "
                            "them to the repository; list versions")
    msub = models.add_subparsers(dest="models_command", required=True)
    push = overrides(msub.add_parser("push", help="upload a model version to the repository"))
    push.add_argument("directory", type=Path,
                      help="a version dir (saved_model.pb inside) or a model dir of version dirs")
    push.add_argument("--name", required=True, help="model name (the REST path /v1/models/NAME)")
    push.add_argument("--version", help="version number (default: the directory's name if it "
                      "is a number, else one above the repository's highest)")
    overrides(msub.add_parser("ls", help="repository versions, local versions, model server state"))
    add = msub.add_parser("add", help="serve a model: add it to model.name in the config file "
                          "and apply it to the running node")
    add.add_argument("name", help="model name (its versions in <store>/NAME/<version>/)")
    add.add_argument("pairs", nargs="*", metavar="KEY=VALUE",
                     help="its settings, KEY relative to models.NAME, e.g. platform=onnx "
                     "batching.enabled=true")
    remove = msub.add_parser("remove", help="stop serving a model: drop it from model.name and "
                             "its models.NAME settings (its versions stay on disk)")
    remove.add_argument("name")
    change = msub.add_parser("set", help="change a model's settings in the config file and apply them")
    change.add_argument("name")
    change.add_argument("pairs", nargs="+", metavar="KEY=VALUE",
                        help="KEY relative to models.NAME (versions=latest:2, labels.stable=1, "
                        "batching.max_batch_size=16); KEY= goes back to the default")
    sync = overrides(sub.add_parser("sync", help="sync the local store from the repository"))
    sync.add_argument("--once", action="store_true", required=True,
                      help="run one cycle and exit (non-zero on failure or a refused version)")
    sub.add_parser("agent", help="the node agent daemon (run by supervisord; follows the running config)")
    overrides(sub.add_parser("objectstore", help="the repo node's object store (run by supervisord)"))


def _logging_to_stdout() -> None:
    """Daemons log to stdout; supervisord writes it to <logs>/<program>.log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def dispatch(args: argparse.Namespace, paths: NodePaths) -> int:
    if args.command == "agent":
        from .agent import main

        _logging_to_stdout()
        return main.run(paths)
    from .agent import load_agent_config

    if args.command == "models" and args.models_command in EDITS:
        return _edit(args, paths)
    config = load_agent_config(paths, args.config, args.overrides)
    if args.command == "models" and args.models_command == "push":
        return push(config, paths, args.directory, args.name, args.version)
    if args.command == "models":
        return ls(config, paths)
    if args.command == "sync":
        return sync_once(config, paths)
    if args.command == "objectstore":
        from .objectstore import run_objectstore

        _logging_to_stdout()
        return run_objectstore(config, paths)
    raise AssertionError(args.command)


def _edit(args: argparse.Namespace, paths: NodePaths) -> int:
    """models add|remove|set; a refused edit exits 1 with the key paths, the file untouched."""
    from . import models_edit
    from .errors import ConfigError

    try:
        if args.models_command == "add":
            return models_edit.add(paths, args.config, args.name, args.pairs)
        if args.models_command == "remove":
            return models_edit.remove(paths, args.config, args.name)
        return models_edit.set_keys(paths, args.config, args.name, args.pairs)
    except ConfigError as exc:
        print(f"{exc}\nnothing changed", file=sys.stderr)
        return 1


# ------------------------------------------------------------------ push


class ProgressBar:
    """A one-line progress bar on a terminal; a line every 10% otherwise (logs, pipes)."""

    def __init__(self, total: int, label: str, out: TextIO = sys.stderr) -> None:
        self.total, self.label, self.out = max(total, 1), label, out
        self.done, self.started, self._lock = 0, time.monotonic(), threading.Lock()
        self._tty = out.isatty()
        self._last_decile = -1

    def __call__(self, count: int) -> None:
        with self._lock:
            self.done += count
            self._draw()

    def _draw(self, final: bool = False) -> None:
        fraction = min(self.done / self.total, 1.0)
        rate = self.done / 1e6 / max(time.monotonic() - self.started, 1e-6)
        text = (f"{self.label} [{'#' * int(fraction * 30):<30}] {fraction:4.0%} "
                f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s")
        if self._tty:
            self.out.write("\r" + text + ("\n" if final else ""))
            self.out.flush()
        elif int(fraction * 10) > self._last_decile or final:
            self._last_decile = int(fraction * 10)
            self.out.write(text + "\n")

    def close(self) -> None:
        with self._lock:
            self._draw(final=True)


def _version_dirs(directory: Path) -> list[tuple[str, Path]]:
    """A model dir holding numeric version dirs -> those; else the directory itself is one."""
    if detect_platform(directory) is None:
        children = [(p.name, p) for p in version_dirs(directory)]
        if children:
            return children
    return [(directory.name, directory)]


def push(config: Config, paths: NodePaths, directory: Path, name: str,
         version: str | None) -> int:
    """Upload one version (or every version dir of a model dir) with a progress bar.

    Refused before a byte moves: a directory holding no model, or a version of another platform
    than the model's ``models.NAME.platform``.
    """
    from .modelfiles import NotAModel, check_version
    from .models_edit import platform_conflict
    from .sources import open_source
    from .sources.base import local_files

    if not directory.is_dir():
        raise SourceError(f"{directory} is not a directory")
    if problem := model_name_problem(name):
        raise SourceError(problem)
    targets = _version_dirs(directory)
    for _, src in targets:   # the agents would refuse it, the model server fail: say so first
        why = platform_conflict(config, name, src)
        if why:
            raise SourceError(why)
        try:
            check_version(src)
        except NotAModel as exc:
            raise SourceError(f"{src} is not a model version: {exc}") from None
    source = open_source(config, paths)
    if version is not None:
        if not is_version_name(version):
            raise SourceError(f"--version must be a number, got {version!r}")
        if len(targets) != 1:
            raise SourceError(f"--version names one version but {directory} holds "
                              f"{len(targets)} version dirs")
        targets = [(version, targets[0][1])]
    elif len(targets) == 1 and not is_version_name(targets[0][0]):
        existing = source.versions(name)
        targets = [(str(max(existing, default=0) + 1), targets[0][1])]
    for dirname, src in targets:
        total = sum(p.stat().st_size for _, p in local_files(src))
        bar = ProgressBar(total, f"{name} v{dirname}")
        pushed = source.push(src, name, dirname, bar)
        bar.close()
        print(f"pushed {name} v{dirname}: {len(pushed.objects)} files, {pushed.size / 1e6:.1f} MB "
              f"to {source.describe()}")
    return 0


# ------------------------------------------------------------------ ls


def ls(config: Config, paths: NodePaths) -> int:
    from .agent.state import version_notes
    from .agent.store import LocalStore
    from .sources import open_source

    source = open_source(config, paths)
    store = LocalStore(local_store(config, paths))
    server = ModelServerClient.of_node(config)
    runtimes = server.runtimes()
    try:
        names = sorted(set(config.model.names) | set(source.models()))
    except SourceError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        names = list(config.model.names)
    print(f"repository: {source.describe()}")
    print(f"local store: {store.root}")
    print(f"{'MODEL':<32}{'VERSION':>10}  {'REPOSITORY':<16}{'LOCAL':<10}MODEL SERVER")
    failed = False
    for name in names:
        try:
            remote = source.versions(name)
            repo_error = ""
        except SourceError as exc:
            remote, repo_error, failed = {}, "unreachable", True
            print(f"warning: {exc}", file=sys.stderr)
        local = store.versions(name)
        states = server.states(name)
        choices = (runtimes or {}).get(name, {})
        notes = version_notes(paths, store.root, name)
        served = "" if name in config.model.names else " (not in model.name)"
        for number in sorted(set(remote) | set(local) | set(states or {})):
            in_repo = repo_error or (_size(remote[number].size) if number in remote else "-")
            state = "unreachable" if states is None else states.get(number, "-")
            note = f"  {notes[number]}" if number in notes else ""
            print(f"{name:<32}{number:>10}  {in_repo:<16}{'yes' if number in local else '-':<10}"
                  f"{state}{served}{note}")
            if number in choices:
                print(f"{'':<44}runtime: {choices[number].describe()}")
    return 1 if failed else 0


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# ------------------------------------------------------------------ sync and agent


def sync_once(config: Config, paths: NodePaths) -> int:
    from .agent import build_syncer

    if config.s3.type == "none":  # not a mistake: a local store is served as it is
        print(f"nothing to sync: s3.type is none, so models are served from local disk "
              f"({local_store(config, paths)}) as they are; a repository is s3.type minio, s3, "
              "qingstor or seaweedfs")
        return 0
    if not logging.getLogger().handlers or logging.getLogger().level > logging.INFO:
        _logging_to_stdout()
    syncer = build_syncer(config, paths)
    report = syncer.run_once()
    print(f"sync {'refused a version' if report.refused else 'ok'}: {report.line()}")
    return 1 if report.refused else 0
