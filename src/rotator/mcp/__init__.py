"""The MCP server: rotator's use cases as MCP tools (fastmcp), on stdio (``rotator mcp``) and
over HTTP under ``rotator serve`` at ``/mcp``.

Like every interface it holds no policy: each tool calls one service use case with the
caller's principal; the service authorizes and audits. Values leave only through the
``reveal_value`` tool.
"""

from rotator.mcp.http import PATH, http_app
from rotator.mcp.server import PrincipalProvider, ServiceProvider, build_server

__all__ = ["PATH", "PrincipalProvider", "ServiceProvider", "build_server", "http_app"]
