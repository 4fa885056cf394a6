"""Exceptions raised by the pure core.

Callers catch these at the edge (a view, a management command, a task) and
turn them into a message, an exit code or an HTTP status.
"""


class CoreError(Exception):
    """Base class of every error raised by :mod:`chain.core`."""


class CodecError(CoreError, ValueError):
    """Bytes or a string that do not decode as the format they claim to be."""


class IntegrityError(CoreError):
    """Stored or received bytes do not hash to the identifier they claim."""


class NotFoundError(CoreError, KeyError):
    """A content identifier that the store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence.
        return str(self.args[0]) if self.args else "not found"


class CryptoError(CoreError):
    """A key, envelope or ciphertext that fails to open or verify."""
