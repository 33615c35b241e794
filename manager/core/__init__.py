"""Pure decisions, fed data and the time: task states, liveness, assignment, the allowlist,
rate limits, RBAC and the audit chain. Nothing here does I/O.
"""
