"""dcbench: benchmark unsupervised content-transformation disentanglement."""

from importlib import metadata as _metadata

from dcbench.hookspecs import hookimpl

try:
    __version__ = _metadata.version("dcbench")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "hookimpl"]
