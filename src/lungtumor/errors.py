"""Exceptions with messages a user can act on.

Every message names the file (where there is one), says what was expected and what was
found, and how to fix it. The CLI prints ``str(exc)`` on one line and exits non-zero.
"""

from __future__ import annotations


class LungTumorError(ValueError):
    """Base class for every error that is the user's to fix (bad input, bad options).

    A ``ValueError``, so that code catching bad values in general catches these too.
    Programmer errors (a wrong shape passed between our own functions) are not LungTumorErrors.
    """


class InputError(LungTumorError):
    """An input file or folder is missing, unreadable, corrupt or inconsistent."""


class GeometryError(LungTumorError):
    """Two volumes that must share a grid do not, or an orientation cannot be determined."""


class ConfigError(LungTumorError):
    """An option, config file or store/checkpoint configuration is invalid or incompatible."""


class CheckpointError(LungTumorError):
    """A checkpoint is missing, corrupt or was not written by lungtumor."""
