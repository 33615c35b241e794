"""Writing the audit trail: describing a change as an event (the chain itself is
:mod:`manager.core.audit_chain`).
"""
