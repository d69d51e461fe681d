"""Models of the local store: list, one model's versions, one version's files and signatures;
with a repository (s3.type not none), its versions and the agent's sync state beside them."""

from __future__ import annotations

from flask import Blueprint, abort, render_template

from appliance.config import model_name_problem
from modelserver.core.platforms import is_version_name

from .. import safepath, syncstate
from ..security import login_required
from . import site, stream_file

bp = Blueprint("models", __name__)


def _valid_name(name: str) -> str:
    """A name from the URL: a model name by the config's rule, and a safe path (no control or
    encoded characters) before it reaches the store."""
    try:
        safepath.check_relative(name)
    except safepath.BadPath:
        abort(400, "not a model name")
    if model_name_problem(name):
        abort(400, "not a model name")
    return name


def _valid_version(version: str) -> None:
    """A version from the URL: a version directory's name, 19 digits at most (an int64)."""
    if not is_version_name(version) or len(version) > 19:
        abort(400, "a version is a number")


@bp.get("/models")
@login_required
def listing():
    store = site().store
    models = [store.model(name) for name in store.names()]
    return render_template("models.html", models=models, store_root=store.store,
                           sync=syncstate.load(site().config, site().paths))


@bp.get("/models/<name>")
@login_required
def model(name: str):
    store = site().store
    name = _valid_name(name)
    if name not in store.names():
        abort(404, "No such model in the store or the config.")
    info = store.model(name)
    signatures = {}
    status = ""
    if info.serving_versions:
        status, signatures = store.metadata(name, info.serving_versions[0])
    sync = syncstate.load(site().config, site().paths)
    return render_template("model.html", info=info, signatures=signatures, meta_status=status,
                           sync=sync, repo=sync.model(name))


@bp.get("/models/<name>/<version>")
@login_required
def version(name: str, version: str):
    store = site().store
    name = _valid_name(name)
    _valid_version(version)
    info = store.model(name)
    match = [v for v in info.versions if v.version == str(int(version))]
    if not match:
        abort(404, "No such version.")
    files = []
    if match[0].on_disk:
        files = store.files(name, match[0].dirname)
    status, signatures = ("not loaded", {})
    if match[0].state in ("AVAILABLE",):
        status, signatures = store.metadata(name, match[0].version)
    return render_template("version.html", info=info, v=match[0], files=files,
                           signatures=signatures, meta_status=status)


@bp.get("/models/<name>/<version>/file/<path:rel>")
@login_required
def download(name: str, version: str, rel: str):
    name = _valid_name(name)
    _valid_version(version)
    dirname = site().store.version_dir(name, version)
    if dirname is None:
        abort(404, "No such version.")
    handle, st, real = safepath.open_inside(site().model_root, f"{name}/{dirname}/{rel}")
    return stream_file(handle, st, real.name, "application/octet-stream")
