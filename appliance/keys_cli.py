"""``appliance keys add|revoke|rotate|ls``: API keys, edited in the node's config file.

A new key is generated here, printed once on stdout, and only its SHA-256 is written (the config
file, then ``run/api-keys.json``). The edit goes the way of ``appliance models set``: the whole
config is checked, the file written under the node's one-change lock, and the running node
applies it (the model server re-reads its keys file within a second, no restart). On a cluster,
give the other nodes the same digest: ``appliance keys add NAME --sha256 HEX`` (``keys ls`` shows
it), as every node's config file holds the same settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from . import models_edit
from .apikeys import PREFIX, new_key
from .config import NodePaths, load_config
from .configedit import ConfigDocument, read_document
from .errors import ApplianceError

Progress = Callable[[str], None]


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="API keys for inference (add, revoke, rotate, ls)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    add = ksub.add_parser("add", help="create a key, print it once, store its SHA-256")
    add.add_argument("name", help="the key's name (what logs and errors say instead of the key)")
    for p in (add, ksub.add_parser("rotate", help="replace a key by a new one, printed once")):
        p.add_argument("--sha256", help="store this digest instead of generating a key (to give "
                       "another node of the cluster the same key: `appliance keys ls` shows it)")
    rotate = ksub.choices["rotate"]
    rotate.add_argument("name")
    add.add_argument("--models", default="", help="models the key may call (comma-separated; default: all)")
    add.add_argument("--rate", type=int, default=0,
                     help="requests per second this key may make on each serving node (default: no limit)")
    ksub.add_parser("revoke", help="remove a key: it is refused within a second").add_argument("name")
    ksub.add_parser("ls", help="the keys: name, models, rate, SHA-256 (never the key)")


def dispatch(args: argparse.Namespace, paths: NodePaths, progress: Progress = print) -> int:
    if args.keys_command == "ls":
        return _ls(paths, args.config, progress)
    key, digest = "", ""
    if args.keys_command in ("add", "rotate"):
        key, digest = new_key() if not args.sha256 else ("", args.sha256.strip().lower())
    name = args.name

    def edit(doc: ConfigDocument) -> str:
        exists = doc.get(f"{PREFIX}.{name}.sha256") is not None
        if args.keys_command == "add":
            if exists:
                raise ApplianceError(f"key {name} exists: `appliance keys rotate {name}` replaces it")
            doc.set(f"{PREFIX}.{name}.sha256", digest)
            if args.models:
                doc.set(f"{PREFIX}.{name}.models", args.models)
            if args.rate:
                doc.set(f"{PREFIX}.{name}.rate", args.rate)
            return f"added key {name}"
        if not exists:
            raise ApplianceError(f"no key {name} (`appliance keys ls` lists them)")
        if args.keys_command == "rotate":
            doc.set(f"{PREFIX}.{name}.sha256", digest)
            return f"rotated key {name}: the old one is refused from now on"
        doc.delete(f"{PREFIX}.{name}")
        return f"revoked key {name}"

    code = _edit(paths, args.config, edit, progress)
    if key:
        same = f"appliance keys {args.keys_command} {name} --sha256 {digest}"
        if args.keys_command == "add":
            same += (f" --models {args.models}" if args.models else "") + (f" --rate {args.rate}" if args.rate else "")
        progress(f"{name}: {key}")
        progress(f"Shown once, never stored: clients send it as 'Authorization: Bearer <key>'. On the "
                 f"cluster's other nodes: {same}")
    return code


def _edit(paths: NodePaths, explicit: Path | None, edit: Callable[[ConfigDocument], str],
          progress: Progress) -> int:
    from .control import one_change_at_a_time

    with one_change_at_a_time(paths):
        where = models_edit.target(paths, explicit)
        if where.overridden(PREFIX):
            raise ApplianceError(f"the node was started with `--set {PREFIX}...`, which wins over {where.path}")
        doc = read_document(where.path)
        said = edit(doc)
        models_edit.install(where, doc, lambda config: None)
    progress(f"{said} in {where.path}")
    return models_edit.apply_edit(paths, where, progress)


def _ls(paths: NodePaths, explicit: Path | None, progress: Progress) -> int:
    config = load_config(models_edit.target(paths, explicit).path)
    if not config.auth.keys:
        progress("no API keys (`appliance keys add NAME` creates one)")
    for name, entry in sorted(config.auth.keys.items()):
        progress(f"{name}  models={','.join(entry.models) or '*'}  rate={entry.rate or '-'}  sha256={entry.sha256}")
    required = [n for n, e in config.model.settings.items() if e.auth_required]
    progress("keys required: " + ("every model" if config.auth.required else ", ".join(required) or "no model"))
    return 0
