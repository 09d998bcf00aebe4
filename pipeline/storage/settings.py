"""How this process reaches object stores (Settings): the endpoint, region, addressing style and
retry attempts come from job keys, else from the standard AWS variables (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, AWS_REGION or AWS_DEFAULT_REGION, AWS_MAX_ATTEMPTS). The driver resolves them
once and ships them to the Ray workers. Credentials never travel: each process finds its own
through the AWS SDK's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
~/.aws/credentials and AWS_PROFILE, or the machine's instance role).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class Settings:
    """How to reach the object store; no credentials (each process finds its own)."""

    endpoint_url: str | None = None  # None: AWS S3 itself; else e.g. https://obs.cn-north-4.myhuaweicloud.com
    region: str | None = None  # None: the SDK's default resolution
    virtual_addressing: bool = False  # bucket.endpoint/key even with a custom endpoint (path style otherwise)
    max_attempts: int = 5  # per request, with the SDK's exponential back-off
    cache_bytes: int = 2 << 30  # local copies of objects that only ffmpeg decodes, per process

    @classmethod
    def resolve(cls, endpoint_url: str | None = None, region: str | None = None,
                virtual_addressing: bool = False, max_attempts: int | None = None,
                cache_gb: float | None = None, env=None) -> Settings:
        """Values given here (job keys) first, then the standard AWS environment variables."""
        env = os.environ if env is None else env
        attempts = max_attempts or env.get("AWS_MAX_ATTEMPTS") or cls.max_attempts
        if not str(attempts).isdigit():
            raise UserError(f"AWS_MAX_ATTEMPTS must be a whole number of attempts, got {attempts!r}")
        return cls(
            endpoint_url=endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            virtual_addressing=virtual_addressing,
            max_attempts=max(1, int(attempts)),
            cache_bytes=int(cache_gb * (1 << 30)) if cache_gb is not None else cls.cache_bytes,
        )

    @classmethod
    def from_config(cls, config) -> Settings:
        return cls.resolve(config.s3_endpoint_url, config.s3_region, config.s3_virtual_addressing,
                           config.s3_max_attempts, config.object_cache_gb)

    def describe(self) -> str:
        return self.endpoint_url or "AWS S3"


_configured: Settings | None = None
# The bound of this process's local copies (local_copies.py): the last settings configured keep
# theirs when configure(None) goes back to the environment's.
_cache_bytes = Settings.cache_bytes


def configure(settings: Settings | None) -> None:
    """Set this process's object-store settings (the driver from the job, workers from the spec).
    None goes back to the environment's."""
    global _configured, _cache_bytes
    _configured = settings
    if settings is not None:
        _cache_bytes = settings.cache_bytes


def current_settings() -> Settings:
    return _configured if _configured is not None else Settings.resolve()


def cache_bytes() -> int:
    """How many bytes of local copies of objects this process keeps (local_copies.py)."""
    return _cache_bytes
