"""The one way the appliance runs a short-lived subprocess (cloud-init's subp)."""

from __future__ import annotations

import logging
import subprocess

from .errors import ProcessError

log = logging.getLogger(__name__)


def run(cmd: list[str], timeout: float = 60.0, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion (``input`` on its stdin); raise :class:`ProcessError` with its
    output if it fails."""
    log.debug("running %s", cmd)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                                env=env)
    except FileNotFoundError:
        raise ProcessError(cmd, None, reason=f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(cmd, None, str(exc.stdout or ""), str(exc.stderr or ""),
                           reason=f"timed out after {timeout}s") from None
    if check and result.returncode != 0:
        raise ProcessError(cmd, result.returncode, result.stdout, result.stderr)
    return result
