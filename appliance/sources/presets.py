"""S3-compatible services as presets of one S3 source: endpoint, region and addressing style.

MinIO, SeaweedFS and QingStor/OIS speak the S3 API; what differs is where they live and how a
bucket is addressed. Keeping them as data (not subclasses or copies of the S3 code) means a new
S3-compatible service is one entry here. This module imports nothing heavy: the config
validator reads :data:`PRESETS` to list the valid ``s3.type`` values, and
:func:`split_s3_path` to check ``model.base.path``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class S3Preset:
    """How to reach one kind of S3 service when the config leaves endpoint/region empty."""

    name: str
    endpoint: str           # "" = boto3's own (AWS); may contain {region}
    region: str             # default region when s3.region is empty
    path_style: bool        # private object stores have no per-bucket DNS names
    needs_endpoint: bool    # a private store has no well-known address: s3.endpoint is required
    doc: str

    def endpoint_for(self, configured: str, region: str) -> str | None:
        """The endpoint URL to use, or None for boto3's default (AWS)."""
        if configured:
            return configured
        if not self.endpoint:
            return None
        return self.endpoint.format(region=region)


PRESETS: dict[str, S3Preset] = {
    preset.name: preset for preset in (
        S3Preset("minio", "", "us-east-1", True, True,
                 "MinIO on the repo node (or anywhere): s3.endpoint=http://<repo node>:<repo.port>"),
        S3Preset("s3", "", "us-east-1", False, False, "AWS S3 (or any S3 endpoint set in s3.endpoint)"),
        S3Preset("qingstor", "https://s3.{region}.qingstor.com", "pek3b", False, False,
                 "QingStor / OIS object storage; set s3.endpoint for other OIS regions"),
        S3Preset("seaweedfs", "", "us-east-1", True, True,
                 "SeaweedFS's S3 gateway (the repo node's store when MinIO is not installed)"),
    )
}


def split_s3_path(base_path: str) -> tuple[str, str] | None:
    """``s3://bucket[/prefix]`` -> (bucket, prefix without outer slashes); None when
    ``base_path`` is not an s3:// path naming a bucket. The one parser of ``model.base.path``
    for the config check, the S3 source and the repo node's object store."""
    if not base_path.startswith("s3://"):
        return None
    bucket, _, prefix = base_path[len("s3://"):].partition("/")
    return (bucket, prefix.strip("/")) if bucket else None
