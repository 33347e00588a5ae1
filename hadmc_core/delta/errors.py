"""Delta and manifest errors. Each message names what failed and what to do."""

from __future__ import annotations

from hadmc_core.errors import DeltaError


class FormatError(DeltaError):
    """A manifest or delta that does not parse, or breaks a hard size cap."""


class SignatureError(DeltaError):
    """A missing or bad Ed25519 signature, or a wrong key."""


class ExpiredError(DeltaError):
    """A manifest past its expiry time."""


class RollbackError(DeltaError):
    """A version lower than the highest already accepted (anti-rollback)."""


class BaseMismatchError(DeltaError):
    """The file a delta is applied to is not the base it was made against."""


class ChunkMismatchError(DeltaError):
    """A reconstructed chunk, file or root whose hash differs from the signed manifest."""


class TruncatedDeltaError(FormatError):
    """A delta that ends before its declared payload."""


class KeyFileError(DeltaError):
    """A key file that cannot be written or read."""
