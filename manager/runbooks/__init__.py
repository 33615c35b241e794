"""Runbooks: versioned definitions, their runs, and the governance standards they are
scored against."""
