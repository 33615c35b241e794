"""Retention: settings, and the background purge they drive."""
