"""Why an image pull failed: one exception with a stable `kind` and a one-line message."""

from __future__ import annotations

from typing import Final

# The kinds, stable keywords for metrics, task reasons and tests.
NOT_FOUND: Final = "not_found"  # unknown repository, tag or digest
UNAUTHORIZED: Final = "unauthorized"  # credentials missing or refused
UNREACHABLE: Final = "unreachable"  # connection refused, DNS, reset
TLS: Final = "tls"  # TLS failed (often: a plain-HTTP registry not listed as insecure)
DIGEST_MISMATCH: Final = "digest_mismatch"
SIZE_MISMATCH: Final = "size_mismatch"
STALLED: Final = "stalled"  # no byte received for the stall timeout
TIMEOUT: Final = "timeout"  # the overall pull deadline passed
DISK_FULL: Final = "disk_full"
PLATFORM: Final = "platform"  # no manifest for this agent's platform in the index
UNSUPPORTED: Final = "unsupported"  # schema 1, unknown media types, non-image artifacts
INVALID: Final = "invalid"  # malformed reference, manifest, config or docker config
REGISTRY: Final = "registry"  # any other error answer from the registry (5xx, 400, …)
LAYER: Final = "layer"  # a layer could not be unpacked


class PullFailed(Exception):
    """An image could not be made ready. `message` is one line that names the image and the
    cause, fit for a task status; `kind` is one of the keywords above."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"PullFailed({self.kind!r}, {self.message!r})"
