"""A TCP relay between workers and their database server that counts the
statements the workers send: what they cost the server, whoever else uses it.

The server's own counters (MySQL's ``Questions``, PostgreSQL's ``xact_commit``)
count every client of the server; on a shared server other clients' load
swamps the few statements of idle workers. The relay reads only the client
side of the protocol, message by message:

MySQL/MariaDB  each packet of sequence number 0 starts a command: COM_QUERY and
               COM_STMT_EXECUTE are statements (as ``Questions`` counts them)
PostgreSQL     after the startup message, each ``Query`` (simple protocol) and
               ``Execute`` (extended protocol) message is one statement; TLS is
               switched off for the relayed connections (it could not read them)
"""

from __future__ import annotations

import asyncio
import threading

import sqlalchemy as sa

COM_QUERY, COM_STMT_EXECUTE = 3, 0x17
PG_STATEMENTS = (ord("Q"), ord("E"))
PG_ENCRYPTION_REQUESTS = (80877103, 80877104)  # SSLRequest, GSSENCRequest


class MySQLCounter:
    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> int:
        """Take the next bytes a client sent; return the statements they completed."""
        buffer, found = self.buffer, 0
        buffer += data
        while len(buffer) >= 4:
            end = 4 + int.from_bytes(buffer[:3], "little")
            if len(buffer) < end:
                break
            if buffer[3] == 0 and end > 4 and buffer[4] in (COM_QUERY, COM_STMT_EXECUTE):
                found += 1
            del buffer[:end]
        return found


class PostgreSQLCounter:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.started = False  # messages carry a type byte once the startup message is past

    def feed(self, data: bytes) -> int:
        """Take the next bytes a client sent; return the statements they completed."""
        buffer, found = self.buffer, 0
        buffer += data
        while True:
            head = 1 if self.started else 0
            if len(buffer) < head + 4:
                break
            end = head + int.from_bytes(buffer[head:head + 4], "big")
            if len(buffer) < (end if self.started else max(end, 8)):
                break
            if self.started:
                found += buffer[0] in PG_STATEMENTS
            elif int.from_bytes(buffer[4:8], "big") not in PG_ENCRYPTION_REQUESTS:
                self.started = True
            del buffer[:end]
        return found


COUNTERS = {"mysql": MySQLCounter, "mariadb": MySQLCounter, "postgresql": PostgreSQLCounter}


class Relay:
    """Listens on 127.0.0.1 in a thread of its own; ``url`` is the database URL
    to give the clients, ``statements`` the count so far."""

    def __init__(self, url: sa.URL) -> None:
        self.counter = COUNTERS[url.get_backend_name()]
        self.target = (url.host or "127.0.0.1", url.port or {"postgresql": 5432}.get(
            url.get_backend_name(), 3306))
        self.statements = 0
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self.relay, "127.0.0.1", 0))
        port = self.server.sockets[0].getsockname()[1]
        query = ({"sslmode": "disable", "gssencmode": "disable"}
                 if url.get_backend_name() == "postgresql" else {})
        self.url = url.set(host="127.0.0.1", port=port).update_query_dict(query)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def relay(self, client_in: asyncio.StreamReader,
                    client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection(*self.target)
        await asyncio.gather(self.pipe(client_in, server_out, self.counter()),
                             self.pipe(server_in, client_out, None))

    async def pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                   counter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                if counter is not None:
                    self.statements += counter.feed(data)  # one thread: no race
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
