"""biaslab experiments: named studies, the runner, reports and the command line."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("biaslab")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"
