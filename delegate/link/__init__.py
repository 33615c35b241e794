"""The delegate's link to the manager: the HTTPS API, the WebSocket stream, and polling as
fallback.
"""
