"""The REST API: FastAPI routes over the async service layer (``rotator serve``).

Every route authenticates its bearer token to a Principal (api.auth), calls one service
use case with it, and turns the service's typed errors into problem+json (api.problems).
Routes hold no policy of their own: access control, audit and validation are the
service's, so the API, the CLI and the MCP server cannot differ.
"""
