"""Code both ends import: wire protocol, crypto, masking, TLS, logging, limits.

Imports neither manager nor delegate.
"""

__all__ = ["__version__"]

try:
    # Written from the git tag by setuptools-scm when the package is built or installed.
    from shared._version import __version__
except ImportError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
