"""Logs of the node: the list, a page by byte offset, live tail, search, download, access log."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone

from flask import Blueprint, abort, jsonify, redirect, render_template, request, url_for

from .. import accesslog, logfiles, safepath
from ..security import login_required
from . import int_arg, site, stream_file

bp = Blueprint("logs", __name__)
ACCESS_TIME = re.compile(r"\d{4}(-\d\d(-\d\d([T ]\d\d(:\d\d(:\d\d(\.\d+)?)?)?)?)?)?")

DESCRIPTIONS = {
    "model_server.log": "the model server (TF Serving compatible): loads, errors, requests",
    "envoy.log": "Envoy: listeners, upstream health, config problems",
    "access.log": "one JSON line per request through Envoy (enable.access.log)",
    "supervisord.log": "process starts, exits and restarts",
    "agent.log": "the node agent: model sync from the repository",
    "logviewer.log": "this browser",
}


@bp.get("/")
@login_required
def index():
    return redirect(url_for("logs.listing"))


@bp.get("/logs")
@login_required
def listing():
    root = site().log_root
    files = []
    for rel, st in safepath.walk_files(root):
        base = rel.rsplit("/", 1)[-1]
        key = base.split(".log")[0] + ".log" if ".log" in base else base
        files.append({"name": rel, "size": st.st_size, "mtime": st.st_mtime,
                      "about": DESCRIPTIONS.get(base) or DESCRIPTIONS.get(key, ""),
                      "rotated": base not in DESCRIPTIONS and key in DESCRIPTIONS,
                      "access": base.startswith("access.log")})
    files.sort(key=lambda f: (f["rotated"], f["name"] not in DESCRIPTIONS, f["name"]))
    return render_template("logs.html", files=files, root=root)


def _open(name: str):
    return safepath.open_inside(site().log_root, name)


@bp.get("/logs/view/<path:name>")
@login_required
def view(name: str):
    handle, st, _ = _open(name)
    with handle:
        size = st.st_size
        length = logfiles.clamp_length(int_arg(request.args.get("length")))
        offset = int_arg(request.args.get("offset"))
        before = int_arg(request.args.get("before"))
        if offset is not None:
            chunk = logfiles.read_forward(handle, size, offset, length)
        else:
            chunk = logfiles.read_backward(handle, size, size if before is None else before, length)
    at_end = chunk.end >= size
    lines = chunk.text.splitlines()
    return render_template("log_view.html", name=name, chunk=chunk, lines=lines, size=size,
                           inode=st.st_ino,
                           mtime=st.st_mtime, at_end=at_end, length=length,
                           live=at_end and request.args.get("live", "1") != "0")


@bp.get("/logs/search/<path:name>")
@login_required
def search(name: str):
    query = request.args.get("q", "")
    if len(query) > 1000:
        abort(400, "search text too long (1000 characters at most)")
    case = request.args.get("case") == "1"
    start = int_arg(request.args.get("from"), 0)
    handle, st, _ = _open(name)
    result = None
    with handle:
        if query:
            result = logfiles.search(handle, st.st_size, query, start=start, case_sensitive=case)
    return render_template("search.html", name=name, q=query, case=case, result=result,
                           size=st.st_size, start=start)


@bp.get("/logs/download/<path:name>")
@login_required
def download(name: str):
    handle, st, real = _open(name)
    return stream_file(handle, st, os.path.basename(real), "text/plain")


@bp.get("/api/logs/chunk/<path:name>")
@login_required
def api_chunk(name: str):
    handle, st, _ = _open(name)
    with handle:
        length = logfiles.clamp_length(int_arg(request.args.get("length")))
        offset = int_arg(request.args.get("offset"))
        before = int_arg(request.args.get("before"))
        if offset is not None:
            chunk = logfiles.read_forward(handle, st.st_size, offset, length)
        else:
            chunk = logfiles.read_backward(handle, st.st_size,
                                           st.st_size if before is None else before, length)
    return jsonify(chunk.as_dict())


@bp.get("/api/logs/tail/<path:name>")
@login_required
def api_tail(name: str):
    handle, st, _ = _open(name)
    with handle:
        inode = int_arg(request.args.get("inode"))
        data = logfiles.tail(handle, st.st_size, int_arg(request.args.get("after")),
                             replaced=inode is not None and inode != st.st_ino)
    data["mtime"] = st.st_mtime  # the page's "changed ... ago" follows the tail
    return jsonify(data)


@bp.get("/access")
@login_required
def access():
    name = request.args.get("log", site().access_log)
    flt = accesslog.AccessFilter(model=request.args.get("model", "")[:200].strip(),
                                 status=request.args.get("status", "")[:10].strip(),
                                 node=request.args.get("node", "")[:200].strip(),
                                 text=request.args.get("q", "")[:200],
                                 since=_moment(request.args.get("since")),
                                 until=_moment(request.args.get("until")))
    bad_time = [key for key in ("since", "until") if request.args.get(key, "").strip()
                and not getattr(flt, key)]
    problem = flt.problem() or (f"{' and '.join(bad_time)}: not a time (2026-01-31T10:00, UTC)"
                                if bad_time else None)
    now = datetime.now(timezone.utc)
    recent = not flt.active and request.args.get("all") != "1" and "before" not in request.args
    if recent:
        # Opening the page shows the last hour: counting every line of a 500 MB log takes seconds.
        flt.since = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    before = int_arg(request.args.get("before"))
    config = site().config
    presets = [(label, (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S"))
               for label, seconds in (("15 min", 900), ("1 h", 3600), ("24 h", 86400))]
    page = dict(flt=flt, name=name, enabled=config.access_log, explain=accesslog.RESPONSE_FLAGS,
                models=sorted(config.model.names), presets=presets, recent=recent)
    if problem:
        return render_template("access.html", result=None, problem=problem, **page), 400
    try:
        handle, st, _ = _open(name)
    except safepath.NotInside:
        return render_template("access.html", result=None, **page)
    with handle:
        size = st.st_size if before is None else min(before, st.st_size)
        result = accesslog.search(handle, size, flt, config.node.address)
    result.size = st.st_size
    page["models"] = sorted(set(page["models"]) | set(result.by_model))
    return render_template("access.html", result=result, **page)


def _moment(value: str | None) -> str:
    """An ISO 8601 time from the form (``2026-01-02T10:00``, seconds optional), else ""."""
    value = (value or "").strip()[:40]
    return value.replace(" ", "T") if ACCESS_TIME.fullmatch(value) else ""
