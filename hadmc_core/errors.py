"""One root exception for the library; subclasses say what to do."""

from __future__ import annotations


class HadmcError(Exception):
    """Root of every error HAD-MC raises on purpose. The message is user-facing."""


class UnknownNameError(HadmcError, KeyError):
    """An architecture, dataset, profile or technique name that does not exist."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsMismatchError(HadmcError):
    """Weights that do not fit the architecture."""


class DatasetError(HadmcError):
    """A dataset that is missing, malformed, or of the wrong shape or labels."""


#: The name the detection readers' contract uses for it.
DataError = DatasetError


class DatasetTooLargeError(DatasetError):
    """A dataset over a size limit; ``limit`` is ``"bytes"`` (decompressed) or ``"samples"``."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class InputFileError(HadmcError):
    """A file that is missing, truncated or corrupt."""


class BudgetError(HadmcError):
    """A constraint that cannot be met; carries the best result found."""

    def __init__(self, message: str, best: object | None = None) -> None:
        super().__init__(message)
        self.best = best


class ConfigError(HadmcError):
    """An invalid technique or pipeline configuration."""


class DeltaError(HadmcError):
    """Base for delta and manifest failures (see hadmc_core.delta.errors)."""


class ModelSourceError(HadmcError):
    """A model reference (built-in name, ``package.module:factory``, ONNX file) that cannot
    be loaded: the message says what was wrong and how to fix it."""


class UnsupportedOperatorError(HadmcError):
    """An ONNX operator that the PyTorch converter does not map; ``op`` and ``node`` name it.

    Loading an ONNX model does not fail on this: the model is compressed by the stages that
    work on the graph alone, and the report names the operator and node.
    """

    def __init__(self, op: str, node: str, detail: str | None = None) -> None:
        self.op, self.node, self.detail = op, node, detail
        message = f"operator {op} (node {node!r}) is not convertible to PyTorch"
        super().__init__(message + (f": {detail}" if detail else ""))
