"""Named verification specs (versioned) and the verify task's windows."""
