"""The logviewer's pages, one blueprint per role: auth, logs, models, cluster."""

from __future__ import annotations

from flask import current_app

from ..app import Site


def site() -> Site:
    return current_app.extensions["logviewer"]


def int_arg(value: str | None, default: int | None = None, low: int = 0,
            high: int = 1 << 62) -> int | None:
    """A bounded non-negative integer query argument (anything else: ``default``)."""
    if value is None or not value.strip().isdigit() or len(value) > 19:
        return default
    return max(low, min(int(value), high))


def stream_file(handle, st, download_name: str, mimetype: str):
    """A download of an already opened (and checked) file: streamed in 64 KiB blocks, with
    Content-Length, Last-Modified and Range support; the file is never read whole."""
    from flask import request
    from werkzeug.wsgi import wrap_file

    response = current_app.response_class(wrap_file(request.environ, handle, 64 * 1024),
                                          mimetype=mimetype, direct_passthrough=True)
    response.content_length = st.st_size
    response.last_modified = int(st.st_mtime)
    response.headers.set("Content-Disposition", "attachment", filename=download_name)
    return response.make_conditional(request.environ, accept_ranges=True,
                                     complete_length=st.st_size)
