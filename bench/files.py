"""File goodput: the fast path against a raw TLS copy and aiortc's stock data channel.

All three run in this process, on loopback, in one event loop, with the same bytes
(a file of fresh random bytes in a temporary directory):

* **TLS baseline**: ``asyncio`` streams with TLS (a throwaway self-signed certificate
  made with ``cryptography``); the server reads the file in 1 MiB blocks (``os.pread``
  in a thread) and the client writes what it receives to a file, fsyncing at the end.
  Server and client share the process and the loop, like our fast path below.
* **Fast path**: ``agent.net.fastpath`` from ``FileReader`` to the store's
  ``PartialFile`` (AES-256-GCM frames, SHA-256 on the receiver, periodic fsync), then
  ``finish`` (fsync, digest) and ``commit`` (rename into place).
* **Data channel**: two in-process aiortc peers (no ICE servers), one negotiated
  channel, 64 KiB messages with ``bufferedAmount``/``bufferedamountlow`` backpressure,
  received in memory (it is the transport's ceiling, far below the disk's). Only
  ``datachannel_mb`` of the file, since it is slow.

The TLS copy and the fast path alternate ``runs`` times after one warm-up each, so
machine noise (on a VM, the first touch of fresh page-cache memory is slow) hits
both alike; the best run of each counts. ``python -m bench.files`` prints the figures.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.files import store as fs
from agent.net.fastpath import FastPathSender, receive_file
from agent.net.peer import rtc_configuration

MiB = 1024 * 1024
BLOCK = MiB
TID = "00000000be4c4f11"


def _make_file(path: Path, size_mb: int) -> fs.FileInfo:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size_mb):
            block = os.urandom(MiB)
            h.update(block)
            f.write(block)
    return fs.FileInfo(size_mb * MiB, h.hexdigest())


def _tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


async def tls_copy(src: Path, dst: Path, size: int, contexts: tuple[Any, Any]) -> float:
    """Seconds to copy ``src`` to ``dst`` over TLS on loopback (file to durable file)."""
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    fd_in = os.open(src, os.O_RDONLY)

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pos = 0
        while pos < size:
            block = await loop.run_in_executor(None, os.pread, fd_in, BLOCK, pos)
            writer.write(block)
            await writer.drain()
            pos += len(block)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        pos = 0
        pending = bytearray()
        while pos + len(pending) < size:
            data = await reader.read(BLOCK)
            if not data:
                raise ConnectionError("the TLS copy ended early")
            pending += data
            if len(pending) >= BLOCK:
                await loop.run_in_executor(None, os.pwrite, fd_out, bytes(pending), pos)
                pos += len(pending)
                pending.clear()
        if pending:
            await loop.run_in_executor(None, os.pwrite, fd_out, bytes(pending), pos)
        await loop.run_in_executor(None, os.fsync, fd_out)
        elapsed = time.perf_counter() - start
        writer.close()
        return elapsed
    finally:
        os.close(fd_in)
        os.close(fd_out)
        server.close()
        await server.wait_closed()


async def fast_path_copy(src: Path, store: fs.FileStore, info: fs.FileInfo) -> float:
    """Seconds for the fast path from ``src`` into ``store`` (verified and committed)."""
    key = os.urandom(32)
    for p in store.directory.iterdir():
        p.unlink()
    part = store.open_partial(TID, "copy.bin", info.size, info.sha256)
    start = time.perf_counter()
    sender = await FastPathSender.open(key, TID, host="127.0.0.1")
    with fs.FileReader(src) as reader:
        await asyncio.gather(
            sender.send(reader, offset=0, size=info.size),
            receive_file(
                "127.0.0.1",
                sender.port,
                session_key=key,
                transfer_id=TID,
                nonce=sender.nonce,
                sink=part,
                offset=0,
                size=info.size,
            ),
        )
    digest = await asyncio.to_thread(store.finish, TID)
    await asyncio.to_thread(store.commit, TID, "copy.bin")
    elapsed = time.perf_counter() - start
    if digest != info.sha256:
        raise AssertionError("the fast path delivered other bytes")
    return elapsed


async def data_channel_copy(src: Path, size: int, chunk: int = 64 * 1024) -> float:
    """Seconds for the first ``size`` bytes of ``src`` over one aiortc data channel."""
    a = RTCPeerConnection(rtc_configuration())
    b = RTCPeerConnection(rtc_configuration())
    ca = a.createDataChannel("files", negotiated=True, id=1)
    cb = b.createDataChannel("files", negotiated=True, id=1)
    loop = asyncio.get_running_loop()
    opened = loop.create_future()
    done = loop.create_future()
    low = asyncio.Event()
    received = 0
    h = hashlib.sha256()

    def on_message(data: bytes) -> None:
        nonlocal received
        received += len(data)
        h.update(data)
        if received >= size and not done.done():
            done.set_result(None)

    cb.on("message", on_message)
    ca.on("open", lambda: None if opened.done() else opened.set_result(None))
    ca.on("bufferedamountlow", low.set)
    ca.bufferedAmountLowThreshold = 1 * MiB
    try:
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(opened, 10)
        with fs.FileReader(src) as reader:
            data = await asyncio.to_thread(reader.read, 0, size)
        want = hashlib.sha256(data).hexdigest()
        view = memoryview(data)
        start = time.perf_counter()
        for pos in range(0, size, chunk):
            while ca.bufferedAmount > 4 * MiB:
                low.clear()
                await low.wait()
            ca.send(bytes(view[pos : pos + chunk]))
        await asyncio.wait_for(done, 120)
        elapsed = time.perf_counter() - start
        if h.hexdigest() != want:
            raise AssertionError("the data channel delivered other bytes")
        return elapsed
    finally:
        await a.close()
        await b.close()


async def measure(size_mb: int = 200, *, runs: int = 3, datachannel_mb: int = 32) -> dict[str, Any]:
    """MB/s (10**6 bytes per second) of the TLS baseline, the fast path and the stock data
    channel, and their ratios; see the module docstring for what each includes."""
    with tempfile.TemporaryDirectory(prefix="peerdesk-bench-files-") as tmp:
        root = Path(tmp)
        src = root / "source.bin"
        info = _make_file(src, size_mb)
        t = time.perf_counter()
        fs.describe(src)  # what a sender does before its offer
        offer_hash = time.perf_counter() - t
        (root / "down").mkdir()
        store = fs.FileStore(root / "down")
        contexts = _tls_contexts(root)
        tls_dst = root / "tls.bin"
        await tls_copy(src, tls_dst, info.size, contexts)  # warm-up
        await fast_path_copy(src, store, info)
        tls_times: list[float] = []
        fast_times: list[float] = []
        for _ in range(runs):
            tls_times.append(await tls_copy(src, tls_dst, info.size, contexts))
            tls_dst.unlink()
            fast_times.append(await fast_path_copy(src, store, info))
        dc_size = min(datachannel_mb, size_mb) * MiB
        dc_time = await data_channel_copy(src, dc_size)

    def mbps(n: float, seconds: float) -> float:
        return n / seconds / 1e6

    tls = mbps(info.size, min(tls_times))
    fast = mbps(info.size, min(fast_times))
    dc = mbps(dc_size, dc_time)
    return {
        "size_mb": size_mb,
        "runs": runs,
        "setup": "one process, one asyncio loop, loopback; best of the runs",
        "tls_mbps": tls,
        "tls_median_mbps": mbps(info.size, statistics.median(tls_times)),
        "fastpath_mbps": fast,
        "fastpath_median_mbps": mbps(info.size, statistics.median(fast_times)),
        "datachannel_mbps": dc,
        "datachannel_mb": dc_size // MiB,
        "offer_hash_mbps": mbps(info.size, offer_hash),
        "fastpath_vs_tls": fast / tls,
        "datachannel_vs_tls": dc / tls,
        "fastpath_vs_datachannel": fast / dc,
    }


if __name__ == "__main__":
    figures = asyncio.run(measure())
    for key, value in figures.items():
        print(f"{key:24} {value:.2f}" if isinstance(value, float) else f"{key:24} {value}")
