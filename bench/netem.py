"""A TCP proxy that adds a fixed one-way delay in each direction: a remote service, emulated.

    python -m bench.netem --listen 127.0.0.1:PORT --target 127.0.0.1:5672 --delay-ms 5

Bytes keep their order and bandwidth is not limited; each chunk is forwarded `delay` after it
arrived, so a request/response exchange costs 2 x delay more (the round-trip time). Used to
run the upload benchmark against RabbitMQ and S3 as if they were across a network, as R2 and a
hosted broker are in production.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except (OSError, RuntimeError):
                    pass
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(256 * 1024)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.sleep(delay * 2)  # the TCP handshake's round trip
        await asyncio.gather(
            _pump(client_reader, upstream_writer, delay),
            _pump(upstream_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, *listen, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def _addr(s: str) -> tuple[str, int]:
    host, port = s.rsplit(":", 1)
    return host, int(port)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.netem")
    p.add_argument("--listen", required=True, type=_addr)
    p.add_argument("--target", required=True, type=_addr)
    p.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay; the round trip costs twice this")
    args = p.parse_args(argv)
    coro = serve(args.listen, args.target, args.delay_ms / 1000)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
