"""Governance over where work may run: freeze windows (:mod:`manager.governance.freeze`)."""
