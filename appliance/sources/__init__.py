"""Model repositories: a local directory or an S3 bucket, behind :class:`ModelSource`.

:func:`open_source` is the one place that picks the backend from the config (a table lookup,
not an if/elif chain). boto3 is imported only when an S3 repository is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ModelSource, RemoteObject, RemoteVersion, parse_version
from .presets import PRESETS, S3Preset

if TYPE_CHECKING:   # config imports .presets: no import cycle at run time
    from ..config import Config, NodePaths

__all__ = ["ModelSource", "RemoteObject", "RemoteVersion", "PRESETS", "S3Preset",
           "open_source", "parse_version"]


def open_source(config: "Config", paths: "NodePaths", max_connections: int = 10,
                call_seconds: float | None = None) -> ModelSource:
    """The repository ``model.base.path`` names: local disk for s3.type none, else S3.

    ``call_seconds`` bounds each S3 call (:func:`.s3.call_limits`); the agent passes its sync
    interval, commands leave botocore's patient defaults.
    """
    if config.s3.type == "none":
        from .local import LocalSource

        return LocalSource(paths.local(config.model.base_path))
    from .s3 import S3Location, S3Source

    s3 = config.s3
    location = S3Location.from_settings(s3.type, config.model.base_path, s3.endpoint, s3.region,
                                        s3.access_key, s3.secret_key)
    return S3Source(location, max_connections, call_seconds)
