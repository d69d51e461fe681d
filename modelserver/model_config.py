"""The models to serve: from ``--model_config_file`` (a ModelServerConfig text proto) or
``--model_name``/``--model_base_path``, validated like ``ServerCore`` validates them.

Parsing uses the official ``model_server_config_pb2`` and ``text_format``, so any file
TF Serving accepts is accepted here with the same meaning.
"""

from __future__ import annotations

from modelserver.manager import ModelConfig
from modelserver.core.status import Code, ServingError


class ConfigFileError(Exception):
    """A config file that does not parse; ``details`` is the parser's message."""

    def __init__(self, path: str, details: str) -> None:
        super().__init__(f"Invalid protobuf file: '{path}'")
        self.path = path
        self.details = details


def read_model_server_config(path: str) -> list[ModelConfig]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigFileError(path, str(exc)) from None
    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigFileError(path, str(exc)) from None
    return model_configs_from_proto(message)


def model_configs_from_proto(message: object) -> list[ModelConfig]:
    """``ModelServerConfig`` to validated :class:`ModelConfig` objects (all errors are INVALID_ARGUMENT)."""
    if message.WhichOneof("config") == "custom_model_config":
        raise ServingError(Code.INVALID_ARGUMENT, "custom_model_config is not supported; use model_config_list")
    configs: list[ModelConfig] = []
    seen: set[str] = set()
    for entry in message.model_config_list.config:
        if entry.name in seen:
            raise ServingError(Code.INVALID_ARGUMENT, f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
        base_path = entry.base_path
        if not base_path.startswith("/"):
            if "://" in base_path:
                raise ServingError(Code.UNIMPLEMENTED,
                                   f"File system scheme of {base_path} is not supported for model {entry.name}")
            raise ServingError(Code.INVALID_ARGUMENT, f"Expected model {entry.name} to have an absolute path or URI; "
                                                      f"got base_path()={base_path}")
        if not entry.model_platform:
            raise ServingError(Code.INVALID_ARGUMENT,
                               "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                               "ModelServerConfig::model_platform.")
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        configs.append(ModelConfig(
            name=entry.name,
            base_path=base_path,
            platform=entry.model_platform,
            policy=kind,
            num_versions=max(policy.latest.num_versions, 1),
            versions=tuple(policy.specific.versions),
            labels=dict(entry.version_labels),
        ))
    return configs
