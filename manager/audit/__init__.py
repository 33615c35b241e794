"""The audit trail as users read it: queries, export, verification, saved filters."""
