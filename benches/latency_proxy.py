#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed time in each direction, so a local endpoint
answers like a remote one (10 ms each way = 20 ms more per request/response round trip).

Delivery keeps order and does not limit throughput: data is forwarded as soon as its delay has
passed, however much is in flight. Standard library only.

Usage: latency_proxy.py --target-port PORT --delay-ms MS [--port 0]
Prints the port it listens on (useful with --port 0), then serves until terminated.
"""
import argparse
import asyncio
import sys
import time


async def pipe(reader, writer, delay):
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            queue.put_nowait((time.monotonic() + delay, data))
    except (ConnectionError, OSError):
        pass
    finally:
        queue.put_nowait((0, None))
        try:
            await sender
        except (ConnectionError, OSError):
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    delay = args.delay_ms / 1000

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", args.target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer, delay), pipe(up_reader, client_writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
