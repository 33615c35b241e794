"""What holds for every test.

Hypothesis judges no example by its wall time (no ``deadline``): on a loaded machine, or when
an example is the first to import a module (scipy for the Mann-Whitney test takes most of a
second alone), a correct example can take seconds, and a deadline would fail it for that.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("tether", deadline=None)
settings.load_profile("tether")
