"""The REST API and the delegate plane: one module of routes per resource, the route table,
OpenAPI, permissions and guards. The only place that maps errors to HTTP statuses.
"""
