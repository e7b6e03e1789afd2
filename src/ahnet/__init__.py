"""ahnet: the 3D Anisotropic Hybrid Network (Liu et al., CVPR 2018) for anisotropic volumes.

Tensor convention, used everywhere in ahnet: volumes are ``(N, C, X, Y, Z)`` where X and Y are the
fine in-plane axes and Z is the thick-slice (between-slice) axis; 2D slices are ``(N, C, X, Y)``.
"""

from .errors import (AhnetError, CheckpointError, ConfigError, DataError, InputShapeError, OutputError,
                     ResourceError, TransferError)

__version__ = "0.1.0"

__all__ = [
    "AhnetError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InputShapeError",
    "OutputError",
    "ResourceError",
    "TransferError",
    "__version__",
]
