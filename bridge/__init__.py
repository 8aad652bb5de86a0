"""livestream-bridge: Adobe Analytics Live Stream into Kafka, exactly once.

The public surface is small: ``bridge.cli.main`` (the console script) and the
settings model in ``bridge.config``. Everything else is internal and may change.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("livestream-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
