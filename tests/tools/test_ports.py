"""The launcher's port check agrees with the servers' own bind: a server stopped a moment ago
(its port in TIME-WAIT) can start again at once, and a port something listens on is refused."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from tools.run import PortTaken, check_port


async def serve_one_connection_and_stop() -> int:
    """A real asyncio server on a free port: a client connects, the server closes first (so the
    TIME-WAIT is the server's, on its port), then the server stops. Returns the port."""
    accepted = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye\n")
        await writer.drain()
        writer.close()  # the server's side closes first
        await writer.wait_closed()
        accepted.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await reader.read() == b"bye\n"  # EOF: the server has closed its side
    await accepted.wait()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return port


def test_a_port_in_time_wait_after_a_stop_is_free_and_a_restart_binds():
    port = asyncio.run(serve_one_connection_and_stop())
    # The state the user met: a plain bind (what the check used to do) is refused.
    with socket.socket() as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE
    check_port("127.0.0.1", port, "ORDERBOOK_SIMULATOR_PORT")  # says free

    async def restart() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        server.close()
        await server.wait_closed()

    asyncio.run(restart())


def test_a_port_something_listens_on_is_refused_in_one_sentence():
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real servers do
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortTaken) as taken:
            check_port("127.0.0.1", port, "DAGSTER_PORT")
    assert str(taken.value) == (f"DAGSTER_PORT: port {port} on 127.0.0.1 is already in use; "
                                "stop what holds it or set DAGSTER_PORT to a free port.")
