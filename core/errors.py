"""Typed errors raised by the QGIS-free engine.

The Processing layer translates every :class:`SoilSSLError` into one
``QgsProcessingException`` (see ``algorithms/base.py``), so the message written
here is what the user reads: name the problem and the fix.
"""


class SoilSSLError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(SoilSSLError):
    """Bad user input: band numbers, extents, fields, point counts, tile sizes..."""


class BackboneError(SoilSSLError):
    """A backbone or model file that cannot be used (format, arch, channels)."""


class DeviceError(SoilSSLError):
    """A device was asked for that this machine does not have."""


class TrainingError(SoilSSLError):
    """Training diverged (NaN/inf loss) or could not continue."""


class Cancelled(SoilSSLError):
    """The user cancelled; outputs of the run were not written."""
