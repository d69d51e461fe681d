"""The appliance's exception tree.

Every error carries what the user needs to fix the problem; the CLI prints ``str(err)`` and
exits non-zero, never a traceback, for anything under :class:`ApplianceError`.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(ApplianceError):
    """The configuration is invalid. ``problems`` lists every ``(key path, message)``."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(problems)} configuration error(s){where}:"]
        lines += [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class RenderError(ApplianceError):
    """A template failed to render or a rendered file failed validation."""


class ProcessError(ApplianceError):
    """A subprocess failed; carries the command, exit code and output (cloud-init's ProcessExecutionError)."""

    def __init__(self, cmd: list[str], exit_code: int | None, stdout: str = "", stderr: str = "",
                 reason: str = "") -> None:
        self.cmd, self.exit_code, self.stdout, self.stderr = cmd, exit_code, stdout, stderr
        text = f"command {' '.join(cmd)!s} failed"
        if exit_code is not None:
            text += f" with exit code {exit_code}"
        if reason:
            text += f": {reason}"
        if stderr.strip():
            text += f"\nstderr: {stderr.strip()[-2000:]}"
        super().__init__(text)


class SupervisorError(ApplianceError):
    """supervisord is not reachable or a process did not reach the wanted state."""


class SourceError(ApplianceError):
    """A model repository (local directory or S3 bucket) could not be listed, read or written."""


class SyncError(ApplianceError):
    """A model version could not be synced into the local store (refused, or a cycle failed)."""
