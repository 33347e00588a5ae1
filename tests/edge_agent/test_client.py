"""The agent's HTTP client against the server it talks to."""

from __future__ import annotations

from edge_agent.client import KEEPALIVE_EXPIRY_SECONDS, ServerClient


def test_idle_connections_expire_before_the_server_closes_them() -> None:
    """Reusing a connection the server is closing gives ReadError/RemoteProtocolError (seen
    in bench/fleet.py at 1,000 agents): the agent must drop idle ones first."""
    import uvicorn

    assert uvicorn.Config(app=None).timeout_keep_alive > KEEPALIVE_EXPIRY_SECONDS
    client = ServerClient("http://127.0.0.1:9")
    pool = client.http._transport._pool  # type: ignore[attr-defined]
    assert pool._keepalive_expiry == KEEPALIVE_EXPIRY_SECONDS
    client.close()
