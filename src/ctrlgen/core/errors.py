"""Exceptions raised by ctrlgen.

Every message says what was wrong (naming the offending value) and how to fix it.
The CLI prints ``str(error)`` for any :class:`CtrlgenError` instead of a traceback.
"""

from __future__ import annotations


class CtrlgenError(Exception):
    """Base class: an error the user can act on."""


class PluginError(CtrlgenError):
    """A plugin failed to load, returned something invalid, or conflicts with another."""


class ParamError(CtrlgenError, ValueError):
    """A parameter value is missing, of the wrong type, or out of range."""


class ImageError(CtrlgenError, ValueError):
    """An input image or mask cannot be used (empty, absurd size, unknown layout)."""


class ModelNotFoundError(CtrlgenError, FileNotFoundError):
    """A referenced model file is not in any model folder."""


class ModelFormatError(CtrlgenError):
    """A model file is corrupt, truncated or of a kind that cannot be used here."""


class UnsafeModelError(CtrlgenError):
    """A pickled checkpoint was refused because it could run arbitrary code."""


class JobError(CtrlgenError):
    """A job request is invalid or failed while running."""


class CancelledError(CtrlgenError):
    """A job was cancelled by its owner."""
