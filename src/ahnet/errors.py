"""Typed exceptions: every error ahnet raises on bad input is an :class:`AhnetError`.

The CLI turns these into one clear message and exit code 2 instead of a traceback.
"""


class AhnetError(Exception):
    """Base class of all errors that are the user's input, not a bug in ahnet."""


class ConfigError(AhnetError, ValueError):
    """A constructor argument, preset name or option is not valid."""


class InputShapeError(AhnetError, ValueError):
    """A tensor given to a network has the wrong rank, channel count or dtype."""


class CheckpointError(AhnetError, ValueError):
    """A weight file cannot be read or does not fit the network it is loaded into."""


class TransferError(AhnetError, ValueError):
    """A 2D network cannot be transferred into the given 3D network (Eq. 1-3)."""


class DataError(AhnetError, ValueError):
    """A data set, volume, label or box file is missing, unreadable or inconsistent."""
