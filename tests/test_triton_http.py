"""The endpoint's keep-alive client for Triton, against small real HTTP servers on loopback."""

from __future__ import annotations

import asyncio

import pytest

from infra.endpoint.triton_http import TritonHTTP, UpstreamError


async def _serve(handler) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
    return head, await reader.readexactly(length)


def test_keeps_one_connection_alive_across_requests() -> None:
    async def main() -> tuple[list[bytes], int]:
        connections = 0
        bodies: list[bytes] = []

        async def handler(reader, writer):
            nonlocal connections
            connections += 1
            while True:
                try:
                    _, body = await _read_request(reader)
                except asyncio.IncompleteReadError:
                    break
                bodies.append(body)
                out = body[::-1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: b\r\n\r\n" % len(out) + out)
                await writer.drain()
            writer.close()

        server, port = await _serve(handler)
        client = TritonHTTP("127.0.0.1", port)
        answers = [await client.post("/x", b"abc" * n, {"Content-Type": "application/json"})
                   for n in (1, 10000, 2)]
        await client.aclose()
        server.close()
        assert [a.body for a in answers] == [b"cba", (b"abc" * 10000)[::-1], b"cbacba"]
        assert answers[0].headers["x-a"] == "b"
        return bodies, connections

    bodies, connections = asyncio.run(main())
    assert len(bodies) == 3
    assert connections == 1


def test_a_connection_closed_by_the_server_is_replaced_once() -> None:
    async def main() -> int:
        connections = 0

        async def handler(reader, writer):  # answers one request, then closes without saying so
            nonlocal connections
            connections += 1
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server, port = await _serve(handler)
        client = TritonHTTP("127.0.0.1", port)
        for _ in range(3):
            assert (await client.post("/x", b"{}", {})).body == b"ok"
        await client.aclose()
        server.close()
        return connections

    assert asyncio.run(main()) == 3


def test_chunked_and_close_delimited_bodies() -> None:
    async def main() -> list[bytes]:
        replies = [b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\n\r\nuntil-close"]

        async def handler(reader, writer):
            await _read_request(reader)
            writer.write(replies.pop(0))
            await writer.drain()
            writer.close()

        server, port = await _serve(handler)
        client = TritonHTTP("127.0.0.1", port)
        first = await client.post("/x", b"{}", {})
        assert first.status == 400
        second = await client.post("/x", b"{}", {})
        await client.aclose()
        server.close()
        return [first.body, second.body]

    assert asyncio.run(main()) == [b"abcde", b"until-close"]


def test_no_server_is_an_upstream_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(UpstreamError, match="cannot connect to Triton"):
            asyncio.run(TritonHTTP("127.0.0.1", port).post("/x", b"{}", {}))


def test_server_dying_mid_answer_is_an_upstream_error() -> None:
    async def main() -> None:
        async def handler(reader, writer):
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            writer.close()

        server, port = await _serve(handler)
        client = TritonHTTP("127.0.0.1", port)
        with pytest.raises(UpstreamError, match="connection to Triton failed"):
            await client.post("/x", b"{}", {})
        server.close()

    asyncio.run(main())
