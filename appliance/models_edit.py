"""``appliance models add|remove|set``: a model's settings, edited in the node's config file.

The config file stays the one source of truth: these commands edit it for the user
(:mod:`configedit` keeps their comments, key order and spelling), validate the *whole*
resulting config with the node's own loader before the file changes, and then apply it to the
running node through :func:`appliance.control.apply` -- the path a hand edit followed by
``appliance up`` takes. A refused edit leaves the file byte-identical.

``KEY`` is relative to ``models.NAME`` (``platform=onnx``, ``batching.enabled=true``,
``labels.stable=1``); ``KEY=`` (empty) removes the key from the file, so it is back to its
default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from modelserver.core.platforms import AUTO, describe_markers, detect_platform, version_dirs

from . import render, runconfig
from .config import (KEYS, Config, NodePaths, effective_values, load_config, local_store,
                     parse_overrides)
from .configedit import ConfigDocument, read_document, replace_checked, typed_value
from .errors import ApplianceError, ConfigError
from .supervision import Supervisor

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """The config file to edit, the ``--set`` overrides the node applies over it, and whether
    the node is running (then the change is applied at once)."""

    path: Path
    overrides: list[str]
    running: bool

    def overridden(self, key: str) -> bool:
        """True when an override of ``up`` sets ``key`` (or a key below it): it wins over the file."""
        return any(name == key or name.startswith(key + ".")
                   for name in parse_overrides(self.overrides)[0])


def target(paths: NodePaths, explicit: Path | None) -> Target:
    """The file the node under ``paths`` reads: the one ``up`` was given, else the default."""
    try:
        running = runconfig.read(paths)
        recorded, overrides = running.config_file, list(running.overrides)
    except runconfig.NotStarted:
        recorded, overrides = None, []
    running = Supervisor(render.supervisor_socket(paths)).is_running()
    path = explicit or recorded or paths.config_file
    if running and recorded and path.resolve() != recorded.resolve():
        raise ApplianceError(f"the running node reads {recorded}, not {path}: edit that one "
                             "(leave out --config)")
    return Target(path, overrides, running)


# ---------------------------------------------------------------------- the commands


def add(paths: NodePaths, explicit: Path | None, name: str, pairs: list[str],
        progress: Progress = print) -> int:
    """Append ``name`` to model.name (with its settings), after checking the store has it."""

    def edit(where: Target, doc: ConfigDocument, names: list[str]) -> list[str]:
        if name in names:
            raise ApplianceError(f"{name} is already in model.name ({', '.join(names)}); change "
                                 f"its settings with `appliance models set {name} KEY=VALUE`")
        _refuse_shadowed(where, "model.name")
        doc.set("model.name", _names_value(doc, names + [name]))
        _set_pairs(where, doc, name, pairs)
        return [f"added {name} to model.name in {where.path}"]

    return _edit(paths, explicit, name, edit, progress)


def remove(paths: NodePaths, explicit: Path | None, name: str, progress: Progress = print) -> int:
    """Drop ``name`` from model.name and its ``models.NAME`` section; never the last model."""

    def edit(where: Target, doc: ConfigDocument, names: list[str]) -> list[str]:
        if name not in names:
            raise ApplianceError(f"{name} is not in model.name ({', '.join(names)})")
        if names == [name]:
            raise ApplianceError(f"{name} is the only model in model.name: a node serves at "
                                 "least one; add another first (`appliance models add NAME`)")
        _refuse_shadowed(where, "model.name")
        left = [n for n in names if n != name]
        doc.set("model.name", _names_value(doc, left))
        doc.delete(f"models.{name}")
        said = [f"removed {name} from model.name in {where.path} (its versions stay on disk)"]
        if names[0] == name:
            said.append(f"the default model is now {left[0]} (the first in model.name)")
        return said

    return _edit(paths, explicit, name, edit, progress)


def set_keys(paths: NodePaths, explicit: Path | None, name: str, pairs: list[str],
             progress: Progress = print) -> int:
    """Set (or with ``KEY=`` reset) keys of ``models.NAME``."""

    def edit(where: Target, doc: ConfigDocument, names: list[str]) -> list[str]:
        if name not in names:
            raise ApplianceError(f"{name} is not in model.name ({', '.join(names)}); "
                                 f"`appliance models add {name}` adds it")
        if not pairs:
            raise ApplianceError("nothing to set: give KEY=VALUE (e.g. batching.enabled=true), "
                                 "or KEY= to go back to the default")
        _set_pairs(where, doc, name, pairs)
        return [f"set {', '.join(pairs)} of {name} in {where.path}"]

    return _edit(paths, explicit, name, edit, progress)


def _edit(paths: NodePaths, explicit: Path | None, name: str,
          edit: Callable[[Target, ConfigDocument, list[str]], list[str]], progress: Progress) -> int:
    """What every edit does around its own change: read the file, change it (``edit`` returns
    what to say), check the whole config, write it, apply it."""
    from .control import one_change_at_a_time

    with one_change_at_a_time(paths):   # another edit's read-change-write would lose this one's
        where = target(paths, explicit)
        doc = read_document(where.path)
        said = edit(where, doc, served_names(doc))
        if not install(where, doc, lambda config: check_versions(config, paths, name)):
            progress(f"{where.path}: unchanged")
            return 0
    for line in said:
        progress(line)
    return apply_edit(paths, where, progress)


# ---------------------------------------------------------------------- helpers


def served_names(doc: ConfigDocument) -> list[str]:
    """model.name as the file has it; the built-in default when the file does not set it."""
    value = doc.get("model.name", KEYS["model.name"].default)
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _names_value(doc: ConfigDocument, names: list[str]) -> Any:
    """The new model.name in the file's own form: its list, or its comma string (", " kept)."""
    current = doc.get("model.name")
    if isinstance(current, list):
        del current[:]
        current.extend(names)
        return current
    return (", " if isinstance(current, str) and ", " in current else ",").join(names)


def _set_pairs(where: Target, doc: ConfigDocument, name: str, pairs: list[str]) -> None:
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ApplianceError(f"{pair!r}: expected KEY=VALUE, e.g. batching.enabled=true "
                                 "(KEY= goes back to the default)")
        if key.startswith(("models.", "model.")):
            raise ApplianceError(f"{key}: KEY is relative to models.{name} (e.g. platform=onnx)")
        full = f"models.{name}.{key}"
        try:
            _refuse_shadowed(where, full)
            if value.strip():
                doc.set(full, typed_value(value.strip()))
            else:
                doc.delete(full)
        except ValueError as exc:
            raise ApplianceError(f"{key}: {exc}") from None


def _refuse_shadowed(where: Target, key: str) -> None:
    if where.overridden(key):
        raise ApplianceError(f"the node was started with `--set {key}...`, which wins over "
                             f"{where.path}: the edit would change nothing; start it again "
                             "without that override (`appliance down`, then `appliance up`)")


def install(where: Target, doc: ConfigDocument, check: Callable[[Config], None]) -> bool:
    """Write the edited file if the whole config it makes (with ``up``'s overrides) is valid."""

    def validate(candidate: Path) -> None:
        try:
            config = load_config(candidate, where.overrides)
        except ConfigError as exc:
            raise ConfigError(exc.problems, str(where.path)) from None
        check(config)

    return replace_checked(where.path, doc.text(), validate)


def explicit_platform(config: Config, name: str) -> str:
    """``models.NAME.platform`` as configured (``auto``: detected per version)."""
    return str(effective_values(config).get(f"models.{name}.platform", AUTO))


def platform_conflict(config: Config, name: str, version_dir: Path) -> str:
    """Why ``version_dir`` cannot serve as model ``name`` under ``config``; '' when it can."""
    found = detect_platform(version_dir)
    if found is None:
        return f"{version_dir} holds no model: expected {describe_markers()}"
    wanted = explicit_platform(config, name)
    if wanted not in (AUTO, found):
        return (f"{version_dir} is a model of platform {found}, but models.{name}.platform is "
                f"{wanted} (`appliance models set {name} platform=` detects it per version)")
    return ""


def check_versions(config: Config, paths: NodePaths, name: str) -> None:
    """A model served from local disk needs a version the model server can load, like `up`
    checks, and none of another platform than the one configured; with a repository the agent
    fetches the versions once the node runs."""
    if config.s3.type != "none" or config.node.role != "serving" or name not in config.model.names:
        return
    model_dir = local_store(config, paths) / name
    problems = {version: platform_conflict(config, name, version) for version in version_dirs(model_dir)}
    wrong = [why for version, why in problems.items() if why and detect_platform(version)]
    if wrong:
        raise ApplianceError("\n".join(wrong))
    if all(problems.values()):    # none, or none with model files
        raise ApplianceError(f"no version of model {name} in {model_dir}: put one in "
                             f"{model_dir}/<version>/ first; a version holds {describe_markers()}")


def apply_edit(paths: NodePaths, where: Target, progress: Progress) -> int:
    if not where.running:
        progress(f"no node is running under {paths.root}: the change applies at the next "
                 "`appliance up`")
        return 0
    from .control import apply

    try:
        # The running node's own overrides stay: an edit of the file is not a new `up --set`.
        apply(paths, list(where.overrides), progress, config_file=where.path)
    except ApplianceError as exc:
        raise ApplianceError(f"{exc}\n{where.path} keeps the change; the running node did not "
                             "take all of it (fix it, or undo it with the opposite command)") from None
    return 0
