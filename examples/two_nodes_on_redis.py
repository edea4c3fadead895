"""Two signaling nodes sharing rooms through Redis: a host on one, a joiner on the other.

Run: python examples/two_nodes_on_redis.py

It starts a throwaway redis-server on a free loopback port (the Debian package
redis-server), two signaling nodes in this process on that Redis, opens a room on
node 1, joins it through node 2, relays a message each way, prints where Redis says
the room lives and a few lines of node 1's /metrics; then node 1 stops and the host
resumes its room on node 2 with the secret ``created`` gave it; and stops everything.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time

import aiohttp
import redis.asyncio as aioredis

from signaling.server import start_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_redis(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("this example needs redis-server (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_redis(port)
            asyncio.run(demo(f"redis://127.0.0.1:{port}/0"))
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)


async def demo(redis_url: str) -> None:
    node1, port1 = await start_server("127.0.0.1", 0, redis_url=redis_url, node="node-one")
    node2, port2 = await start_server("127.0.0.1", 0, redis_url=redis_url, node="node-two")
    try:
        async with aiohttp.ClientSession() as http:
            host = await http.ws_connect(f"http://127.0.0.1:{port1}/ws")
            joiner = await http.ws_connect(f"http://127.0.0.1:{port2}/ws")

            await host.send_json({"type": "create"})
            created = await host.receive_json(timeout=5)
            room = created["room"]
            print(f"node 1 opened room {room}")

            store = aioredis.Redis.from_url(redis_url, decode_responses=True)
            print(f"Redis says room {room} lives on {await store.get(f'peerdesk:room:{room}')}")
            await store.aclose()

            await joiner.send_json({"type": "join", "room": room})
            joined = await joiner.receive_json(timeout=5)
            print(f"joined through node 2: {json.dumps(joined)}")
            print(f"host heard: {json.dumps(await host.receive_json(timeout=5))}")

            await joiner.send_json({"type": "send", "to": "host", "data": "hello from node 2"})
            print(f"host got:   {(await host.receive_json(timeout=5))['data']}")
            await host.send_json({"type": "send", "to": joined["peer"], "data": "hi from node 1"})
            print(f"joiner got: {(await joiner.receive_json(timeout=5))['data']}")

            async with http.get(f"http://127.0.0.1:{port1}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith(("peerdesk_rooms ", "peerdesk_relayed", "peerdesk_cluster")):
                        print(f"node 1 /metrics: {line}")
            await joiner.close()

            # node 1 goes away; the host comes back through node 2 and keeps its room
            await node1.cleanup()
            await host.close()
            back = await http.ws_connect(f"http://127.0.0.1:{port2}/ws")
            await back.send_json({"type": "resume", "room": room, "secret": created["resume"]})
            resumed = await back.receive_json(timeout=5)
            print(f"after node 1 stopped, the host resumed room {resumed['room']} on node 2")
            await back.close()
    finally:
        await node2.cleanup()
        await node1.cleanup()


if __name__ == "__main__":
    main()
