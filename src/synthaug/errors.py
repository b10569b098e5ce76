"""Errors in what the user gave (config, data, files, settings) versus everything else.

The command line prints a :class:`UserError` as one line (``error: ...``, exit code 2): its message names
the file, field or value at fault and what to do. Any other exception is a bug and is shown with its
traceback. Each class also derives from the built-in a caller would expect (``ValueError`` for a bad value,
``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error caused by the user's input; its message says what is wrong and the fix."""


class SettingError(UserError, ValueError):
    """A setting or argument value that cannot work (names the field and the allowed values)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or model the user pointed at (or that an earlier stage should have made) is not there."""


class ConfigError(UserError, ValueError):
    """An invalid experiment config; the message names each bad field and value."""


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, line and value at fault."""


class StageMismatch(UserError, RuntimeError):
    """A finished stage was made with other inputs than the current config asks for."""


class StoreError(UserError, RuntimeError):
    """A synthetic store that cannot be used as asked (another schema, a broken manifest, ...)."""
