"""The account every resource belongs to.

Tether serves one account today, but ids and envelope contexts already carry the account
(``shared.envelope.EnvelopeContext.account``), so that more accounts can come without
re-encrypting anything: data sealed now is bound to this id, and stays valid.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ACCOUNT"]

DEFAULT_ACCOUNT = "acct_default"
