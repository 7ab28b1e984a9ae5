"""The MCP server: rotator's use cases as MCP tools (fastmcp), on stdio (``rotator mcp``) and
over HTTP under ``rotator serve`` at ``/mcp``.

Like every interface it holds no policy: each tool calls one service use case with the
caller's principal; the service authorizes and audits. Values leave only through the
``reveal_value`` tool. The tools are in :mod:`rotator.mcp.server` (``build_server``); this
package imports fastmcp only there, so importing it (the REST app does) costs nothing.
"""

from rotator.mcp.http import PATH, McpEndpoint

__all__ = ["PATH", "McpEndpoint"]
