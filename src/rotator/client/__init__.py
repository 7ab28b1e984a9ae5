"""The rotator SDK for applications (see :mod:`rotator.client.client`)."""

from rotator.client.aio import AsyncClient
from rotator.client.client import Client, Unreachable
from rotator.client.helpers import psycopg_connect, psycopg_factory, redis_factory
from rotator.domain.change import Change

__all__ = [
    "AsyncClient",
    "Change",
    "Client",
    "Unreachable",
    "psycopg_connect",
    "psycopg_factory",
    "redis_factory",
]
