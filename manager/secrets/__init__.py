"""Secrets and secret managers: the service, their kinds, scopes, and the operations run on
delegates.
"""
