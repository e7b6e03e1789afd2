"""Typed exceptions: every error ahnet raises on bad input is an :class:`AhnetError`.

The CLI turns these into one clear message and exit code 2 instead of a traceback.
"""


class AhnetError(Exception):
    """Base class of all errors that are the user's input, not a bug in ahnet.

    The message is always one line (line breaks of wrapped library messages are folded), so that
    the CLI prints exactly one line per error.
    """

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and ("\n" in args[0] or "\r" in args[0]):
            args = (" ".join(args[0].split()),)
        super().__init__(*args)


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


class ResourceError(AhnetError, MemoryError):
    """A job would need more memory than is available or allowed; raised before it is tried."""


class OutputError(AhnetError, OSError):
    """An output cannot be written: a folder that cannot be created or written, a full disk, ...

    Whatever was being written is removed, so no half-written file is ever left behind.
    """
