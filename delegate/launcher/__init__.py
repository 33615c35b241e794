"""The task launcher: the one part of a delegate installation that may switch users.

A small root-side process (``tether-task-launcher``) that starts the delegate's tasks as
their slots' users, so that the delegate itself, which faces the network and holds the
token, the key and the spool, holds no capability at all. It imports, of the delegate, only
itself and :mod:`delegate.run.isolation` (tests/test_layers.py holds it to that).
"""
