"""rotator: a credential rotation service.

Credentials are kept encrypted (crypto/), stored through SQLAlchemy Core (store/), every
operation is written to a hash-chained audit log (audit/), and the interfaces (cli/, later the
REST API and MCP server) are thin layers over one service layer (service/).
"""

__version__ = "0.1.0"
