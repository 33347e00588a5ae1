"""One root exception for the agent; each subclass says what went wrong and what to do."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose. The message is operator-facing."""


class SettingsError(AgentError):
    """Missing or invalid settings (flags or ``HADMC_AGENT_*``)."""


class DataDirError(AgentError):
    """The data directory cannot be created, read or written."""


class EnrollmentError(AgentError):
    """Enrollment failed or the stored credential is unusable."""


class NetworkError(AgentError):
    """A transient failure: connection, timeout, or a 5xx / 429 answer. Retried with backoff."""


class ServerError(AgentError):
    """The server answered with a client error (4xx) that retrying will not fix."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UpdateError(AgentError):
    """An update or rollback attempt failed; ``phase`` is the report's phase."""

    phase = "manifest"


class ManifestRejected(UpdateError):
    """Bad signature, expired, malformed, or a version below the anti-rollback floor."""

    phase = "manifest"


class RollbackOrderError(UpdateError):
    """A rollback order that is unsigned, badly signed, expired or names something else."""

    phase = "rollback"


class DownloadError(UpdateError):
    """A download that broke its bounds (size, count) or kept failing."""

    phase = "download"


class VerifyError(UpdateError):
    """Rebuilt or downloaded files whose hashes do not match the signed manifest."""

    phase = "verify"


class SmokeTestError(UpdateError):
    """The staged model does not load, or its outputs differ from the probe's."""

    phase = "smoke"


class SwitchError(UpdateError):
    """The atomic switch of ``current`` failed."""

    phase = "switch"
