"""Code both ends import: wire protocol, crypto, masking, TLS, logging, limits.

Imports neither manager nor delegate.
"""

__version__ = "0.1.0"
