"""Wire models of the REST API: a leaf imported by the API, the services and the client."""
