"""The dashboard: server-rendered pages over the service, served by ``rotator serve`` at ``/``.

An interface like the REST API: it imports only the service, the domain and the errors, and
every page calls the same service use cases as the REST routes, as the principal of the
logged-in API token, so its permissions are exactly the API's. See docs/dashboard.md.
"""

from rotator.dashboard.routes import router

__all__ = ["router"]
