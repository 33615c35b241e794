"""The task path: submission, dispatch to delegates, the hub of connected delegates, change
events and profiles.
"""
