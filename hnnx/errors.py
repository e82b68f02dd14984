"""Errors raised by hnnx.

Every error names the node, tensor or file at fault in its message; the CLI prints
``str(error)`` as one line on stderr and exits with code 2.
"""

from __future__ import annotations


class HnnxError(Exception):
    """Base class of every error hnnx raises on bad input."""


class ModelError(HnnxError):
    """A model file or graph is unreadable or invalid."""


class NodeError(ModelError):
    """An ``hnnx`` node has invalid attributes, inputs or outputs."""

    def __init__(self, node: str, message: str, source: str | None = None) -> None:
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}node {node!r}: {message}")
        self.node = node
        self.detail = message

    def at(self, source: str) -> "NodeError":
        """The same error, naming the file or model it was found in."""
        return NodeError(self.node, self.detail, source)


class DataError(HnnxError):
    """Input data (a dataset file, an array) does not fit the model."""
