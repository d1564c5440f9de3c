"""`serve`'s listening socket: the connections it accepts get TCP_NODELAY from asyncio.

With Nagle's algorithm on, each response after the first on a kept-alive connection waited
for the client's delayed ACK (40 ms a request, found by `bench/serve.py --baseline`).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

uvicorn = pytest.importorskip("uvicorn")

from searchengine.server.runner import listening_socket  # noqa: E402


async def _nodelay_of_accepted(listening: socket.socket) -> int:
    """TCP_NODELAY of the transport asyncio makes for a connection accepted on `listening`."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
    host, port = listening.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(accepted, 30)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_connections_to_serve_have_nagle_off() -> None:
    config = uvicorn.Config(app=None, host="127.0.0.1", port=0)
    assert asyncio.run(_nodelay_of_accepted(listening_socket(config))) != 0


def test_uvicorns_own_socket_leaves_nagle_on() -> None:
    """What `listening_socket` fixes, so that the test above cannot pass by itself: uvicorn's
    socket says protocol 0, and asyncio skips it."""
    config = uvicorn.Config(app=None, host="127.0.0.1", port=0)
    if asyncio.run(_nodelay_of_accepted(config.bind_socket())) != 0:
        pytest.skip("uvicorn's own socket gets TCP_NODELAY now: listening_socket can go")
