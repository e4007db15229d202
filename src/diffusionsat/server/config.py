"""Server settings and the bind-address rule (loopback by default; anything else needs a token)."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


class InsecureBindError(ValueError):
    """Binding to a non-loopback address without a bearer token would expose the server."""


def is_loopback(host: str) -> bool:
    """``True`` for ``127.0.0.0/8``, ``::1`` and ``localhost``; everything else is reachable from outside."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without ``--token`` (and explain why and how), or a guessable token."""
    if token is not None and len(token.strip()) < 8:
        raise ValueError("token: must be at least 8 characters, not counting blanks")
    if token is not None and token != token.strip():
        raise ValueError("token: must not start or end with whitespace")
    if not is_loopback(host) and not token:
        raise InsecureBindError(
            f"binding to {host!r} exposes the server beyond this machine; pass --token TOKEN "
            "(clients then send 'Authorization: Bearer TOKEN'), or bind to 127.0.0.1"
        )


@dataclass
class ServerConfig:
    """Limits and policies of one server; every limit has a safe default.

    Times are seconds, sizes bytes. ``abandon_after``: a queued or running job that nobody has
    polled for this long is cancelled (its client went away). ``job_ttl``: finished jobs and their
    files are deleted this long after they finish, so the output folder stays bounded.
    """

    host: str = DEFAULT_HOST
    token: str | None = None
    workers: int = 1
    max_queue: int = 8
    output_dir: Path | None = None
    device: str = "cpu"
    max_json_bytes: int = 64 * 1024
    max_upload_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_bands: int = 32
    max_frames: int = 8
    #: Work of one request: output pixels over all its images (width × height × images) …
    max_pixels: int = 1024 * 1024
    #: … denoising steps per image …
    max_steps: int = 200
    #: … and the estimated peak memory of sampling it (bytes; see ``tasks.estimate_memory``).
    max_memory_bytes: int = 8 * 1024**3
    abandon_after: float = 120.0
    max_job_seconds: float = 1800.0
    job_ttl: float = 3600.0
    max_jobs_kept: int = 1000
    shutdown_grace: float = 10.0
    reaper_interval: float = 1.0

    def validate(self) -> ServerConfig:
        from ..validation import check_device

        check_bind(self.host, self.token)
        check_device(self.device)
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers={self.workers!r}: out of range; allowed [1, 64]")
        if not 0 <= self.max_queue <= 10_000:
            raise ValueError(f"max_queue={self.max_queue!r}: out of range; allowed [0, 10000]")
        if not 64 <= self.max_pixels <= 2**31:
            raise ValueError(f"max_pixels={self.max_pixels!r}: out of range; allowed [64, 2^31]")
        if not 1 <= self.max_steps <= 1000:
            raise ValueError(f"max_steps={self.max_steps!r}: out of range; allowed [1, 1000]")
        for name in ("abandon_after", "max_job_seconds", "job_ttl", "shutdown_grace", "reaper_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0 seconds")
        return self

    def tokens_equal(self, given: str) -> bool:
        """Constant-time comparison, so response timing does not leak the token."""
        return self.token is not None and secrets.compare_digest(given.encode(), self.token.encode())
