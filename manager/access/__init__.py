"""People and keys: users, groups, apps and envs as entities, logins, passwords, SSO, API keys
and delegate tokens, and the principal a request acts as.
"""
