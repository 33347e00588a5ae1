"""Service errors: each maps to one HTTP problem status (see ``api.problems``)."""

from __future__ import annotations

from hadmc_core.errors import HadmcError


class ServiceError(HadmcError):
    """Root of the errors the service raises on purpose; the message is user-facing."""

    status = 400
    title = "Bad request"

    def response_headers(self) -> dict[str, str]:
        """Headers that go with the problem response (none unless a subclass says)."""
        return {}


class NotFoundError(ServiceError):
    status, title = 404, "Not found"


class ConflictError(ServiceError):
    """An invalid state transition (e.g. cancelling a finished job)."""

    status, title = 409, "Conflict"


class InvalidInputError(ServiceError):
    status, title = 422, "Invalid input"


class PayloadTooLargeError(ServiceError):
    status, title = 413, "Payload too large"


class UnsupportedMediaTypeError(ServiceError):
    status, title = 415, "Unsupported media type"


class MalformedRangeError(ServiceError):
    """A download's ``Range`` header that does not parse."""

    def __init__(self, http_range: str, reason: str) -> None:
        super().__init__(f"{reason.rstrip('.')} (Range: {http_range[:100]!r}); send "
                         "bytes=START-END, bytes=START- or bytes=-N")


class RangeNotSatisfiableError(ServiceError):
    """A download's ``Range`` that starts beyond the end of the file."""

    status, title = 416, "Range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the Range starts beyond the end of the file ({size} bytes); ask "
                         f"for bytes within 0-{max(size - 1, 0)}")
        self.size = size

    def response_headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class AuthenticationError(ServiceError):
    status, title = 401, "Unauthorized"


class PermissionDeniedError(ServiceError):
    status, title = 403, "Forbidden"


class RateLimitedError(ServiceError):
    status, title = 429, "Too many requests"


class SchemaOutdatedError(ServiceError):
    """The database schema is not at the revision this code needs."""

    status, title = 503, "Database schema outdated"


class DependencyError(ServiceError):
    """A backing service (database, broker, object store) cannot be used."""

    status, title = 503, "Dependency unavailable"


class IntegrityError(ServiceError):
    """A stored object does not match its content hash (altered at rest)."""

    status, title = 500, "Stored data is corrupt"


class JobCancelledError(Exception):
    """Raised inside a running job when a cancel was requested (not a HadmcError)."""
