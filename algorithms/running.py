"""What surrounds every SoilSSL run: the log bridge, output checks, error translation.

The ``soilssl`` logger is bridged to the Processing feedback by one handler, installed
once (a plugin reload replaces it instead of adding a second one).  While an algorithm
runs, ``FeedbackHandler.routing`` points it at that run's feedback: records from the
algorithm's thread go to its own feedback, records from helper threads (tile readers) to
the latest run started.  Warnings (and messages starting with "Warning") become feedback
warnings, tables (several lines aligned with spaces) command info in a fixed-width font,
the rest feedback info.
"""
import contextlib
import logging
import re
import threading

from qgis.core import QgsProcessing, QgsProcessingException, QgsProcessingOutputLayerDefinition

LOGGER = "soilssl"


class FeedbackHandler(logging.Handler):
    soilssl_bridge = True  # marks the bridge across plugin reloads (class objects differ)

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._local = threading.local()
        self._running = []
        self._lock = threading.Lock()

    def feedback(self):
        fb = getattr(self._local, "feedback", None)
        if fb is None:
            with self._lock:
                fb = self._running[-1] if self._running else None
        return fb

    def emit(self, record):
        fb = self.feedback()
        if fb is None:
            return
        try:
            msg = self.format(record)
            if record.levelno >= logging.WARNING or msg.startswith("Warning"):
                fb.pushWarning(msg)
            elif "\n" in msg and "  " in msg:  # a table: fixed-width font, spacing kept
                fb.pushCommandInfo(preformatted(msg))
            else:
                fb.pushInfo(msg)
        except Exception:  # a log message must never break a run
            self.handleError(record)

    @contextlib.contextmanager
    def routing(self, feedback):
        previous = getattr(self._local, "feedback", None)
        self._local.feedback = feedback
        with self._lock:
            self._running.append(feedback)
        try:
            yield
        finally:
            self._local.feedback = previous
            with self._lock:
                self._running = [f for f in self._running if f is not feedback]


def preformatted(text):
    """``text`` with its spaces kept in the dialog's HTML log (non-breaking spaces)."""
    return text.replace(" ", "\u00a0")


def bridge():
    """The one bridge handler of the ``soilssl`` logger (installed on first use)."""
    logger = logging.getLogger(LOGGER)
    current = None
    for handler in list(logger.handlers):
        if getattr(handler, "soilssl_bridge", False):
            if current is None and isinstance(handler, FeedbackHandler):
                current = handler
            else:  # left by a previous load of the plugin
                logger.removeHandler(handler)
    if current is None:
        current = FeedbackHandler()
        logger.addHandler(current)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return current


def remove_bridge():
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "soilssl_bridge", False):
            logger.removeHandler(handler)


def check_outputs(alg, parameters):
    """An output folder that cannot be written fails the run before any heavy work."""
    from ..core.files import discard, temp_beside
    for param in alg.destinationParameterDefinitions():
        value = parameters.get(param.name())
        if isinstance(value, QgsProcessingOutputLayerDefinition):
            value = value.sink.staticValue()
        if isinstance(value, str) and value and value != QgsProcessing.TEMPORARY_OUTPUT \
                and not re.match(r"^[A-Za-z]{2,}:", value):  # memory:, ogr:, postgres:...
            discard(temp_beside(value))


def translated(exc):
    """The QgsProcessingException the user reads for an engine or file error; a new one
    without cause or traceback, so that nothing of the failed run stays referenced."""
    from ..core.errors import SoilSSLError
    from ..core.files import io_hint
    if isinstance(exc, QgsProcessingException):
        return QgsProcessingException(str(exc))
    if isinstance(exc, SoilSSLError):
        hint = io_hint(exc.__cause__) if exc.__cause__ is not None else ""
        return QgsProcessingException(str(exc) + (" " + hint if hint and hint not in str(exc)
                                                  else ""))
    # OSError the engine did not wrap (GDAL, torch...)
    return QgsProcessingException(f"Reading or writing a file failed: {exc}. "
                                  f"{io_hint(exc)}".strip())


def warn_geographic(alg, parameters, context, feedback):
    """Tiles of a raster in degrees have no fixed ground size: say so."""
    from .help import GEOGRAPHIC
    layer = alg.parameterAsRasterLayer(parameters, "INPUT", context)
    if layer is not None and layer.crs().isGeographic():
        feedback.pushWarning(GEOGRAPHIC.format(crs=layer.crs().authid()))
