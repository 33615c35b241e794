"""The delegate's exit statuses, each listed once.

A service manager restarts the delegate on any other failure; on :data:`NO_RESTART` it must
not, since starting again cannot fix a bad configuration, a refused token or an old protocol
(the systemd unit's ``RestartPreventExitStatus`` lists exactly these).
"""

from __future__ import annotations

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_VERSION",
    "NO_RESTART",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
# The manager refused the token (revoked, unknown), or another process took over this
# delegate with the same key.
EXIT_AUTH = 3
# The manager no longer speaks this delegate's protocol.
EXIT_VERSION = 4
# Stopped by Ctrl-C before the event loop could handle the signal (the shell's convention).
EXIT_INTERRUPTED = 130

NO_RESTART = frozenset({EXIT_CONFIG, EXIT_AUTH, EXIT_VERSION})
