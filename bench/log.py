"""Session-log catch-up: a participant joins a session whose log already holds N entries.

    python -m bench.log [N]           (default 10,000 entries)

Measured in one process, cores pumped by hand (no network): from the joiner's
``request_sync`` to the moment its store durably holds every entry and it has
committed them all. That covers the sequencer answering (batching ``sync``
messages), JSON encode and decode of every message, the joiner checking every
entry (canonical form, chain, policy, the author's Ed25519 signature, and the
sequencer's on proposed entries) and persisting each ``sync`` batch to SQLite in
one transaction (WAL, ``synchronous=FULL``), and its acks.

The log is a realistic mix: half the entries written by the sequencer itself (one
signature to check), half proposed by an assistant CSR and by the customer (two).

Two baselines in the same run, on the same entries:

* **SQLite**: writing the same canonical bytes into an identical store in one
  transaction (``LogStore.append``): the floor for persisting the log at all.
* **signatures**: only verifying the Ed25519 signatures those entries carry (the
  cryptographic floor of checking them; ``cryptography``/OpenSSL, one core).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.protocol import log as lw
from agent.protocol.log import Entry
from agent.session.log import SessionLog
from agent.store import LogStore
from tests.logsim import ALICE, BOB, CAROL, joined

A, B, C = ALICE.id, BOB.id, CAROL.id


def _drain(node: SessionLog) -> None:
    for request in node.persist_requests():
        node.persisted(request.id, 0.0)
    while node.next_event() is not None:
        pass


def _pump(nodes: dict[str, SessionLog], pool: ThreadPoolExecutor | None = None) -> None:
    moving = True
    while moving:
        moving = False
        for pid, node in nodes.items():
            _drain(node)
            for to, text in node.messages_to_send():
                moving = True
                if to not in nodes:
                    continue
                if pool is None:
                    nodes[to].receive(pid, text, 0.0)
                    continue
                # What the glue would do: decode, check signatures on the pool, feed the core.
                msg = lw.decode(text)
                if isinstance(msg, lw.Sync | lw.Append):
                    key = nodes[to].state.sequencer_key
                    lw.prefetch_signatures(msg.entries, key, pool.map, chunk=64)
                nodes[to].receive(pid, msg, 0.0)


def build_session(n: int) -> SessionLog:
    """Alice sequences a log of ``n`` entries (plus 3 to start), Bob acking: all committed."""
    clock = iter(range(10**9))
    alice = SessionLog(A, ALICE.key, {A}, A, clock=lambda: 1.7e9 + next(clock) / 1000)
    bob = SessionLog(B, BOB.key, {A}, A)
    nodes = {A: alice, B: bob}
    alice.start("123456", "Alice", 0.0)
    alice.propose("participant", joined(BOB, "assistant"), 0.0)
    _pump(nodes)
    alice.propose("participant", joined(CAROL, "customer", True), 0.0)
    _pump(nodes)
    genesis = alice.entries[0].digest
    for i in range(n):
        text = (
            f"line {i}: " + "the printer says PC LOAD LETTER, what does that mean? "[: 20 + i % 40]
        )
        turn = i % 4
        if turn < 2:
            alice.propose("chat", {"from": A, "name": "Alice", "text": text, "to": None}, 0.0)
        elif turn == 2:
            bob.propose("note", {"text": text, "by": B}, 0.0)
        else:
            body = {"from": C, "name": "Carol", "text": text, "to": None}
            proposal = lw.make_proposal(
                CAROL.key, session=genesis, ts=1.7e9 + i, kind="chat", body=body
            )
            alice.receive(C, lw.encode(lw.Propose(proposal)), 0.0)
        if i % 200 == 199:
            _pump(nodes)
    _pump(nodes)
    alice.handle_timer(1.0)
    _pump(nodes)
    assert alice.committed_seq == len(alice.entries) - 1 == n + 2
    return alice


def catch_up(alice: SessionLog, directory: Path, pool: ThreadPoolExecutor | None = None) -> float:
    """A fresh Carol with an empty store joins and catches up; returns seconds taken."""
    with LogStore(directory / "carol.sqlite") as store:
        carol = SessionLog(C, CAROL.key, {A}, A, store=store)
        nodes = {A: alice, C: carol}
        last = len(alice.entries) - 1
        start = time.perf_counter()
        carol.request_sync(0.0)
        _pump(nodes, pool)
        took = time.perf_counter() - start
        assert carol.durable_seq == last
        assert carol.committed_seq == last
        assert store.last() == alice.head
    return took


async def catch_up_over_channel(alice: SessionLog, home: Path) -> float:
    """A fresh assistant (Bob, an empty store) catches up through the agent's own glue
    (``SessionRecord``: disk writes off the event loop, in order) over a real aiortc
    data channel on loopback, as in a session; returns seconds from its sync request
    until its store holds, and it has committed, every entry."""
    import asyncio

    from aiortc import RTCPeerConnection

    from agent.identity import Identity
    from agent.net.peer import CHANNELS, rtc_configuration
    from agent.services.record import SessionRecord

    os.environ["PEERDESK_HOME"] = str(home)
    pcs = [RTCPeerConnection(rtc_configuration()) for _ in range(2)]
    a_ch, b_ch = (pc.createDataChannel("log", negotiated=True, id=CHANNELS["log"]) for pc in pcs)
    opened = asyncio.Event()
    b_ch.on("open", opened.set)
    await pcs[0].setLocalDescription(await pcs[0].createOffer())
    await pcs[1].setRemoteDescription(pcs[0].localDescription)
    await pcs[1].setLocalDescription(await pcs[1].createAnswer())
    await pcs[0].setRemoteDescription(pcs[1].localDescription)
    await asyncio.wait_for(opened.wait(), 10)

    def alice_sends() -> None:
        _drain(alice)
        for to, text in alice.messages_to_send():
            if to == B:
                a_ch.send(text)

    def alice_hears(data: str | bytes) -> None:
        alice.receive(B, data, time.monotonic())
        alice_sends()

    a_ch.on("message", alice_hears)
    bob = SessionRecord(
        Identity(BOB.key, "Bob"),
        "123456",
        send=lambda peer, text: b_ch.send(text) if peer == A else None,
        emit=lambda event: None,
        primary=A,
        role="csr",
    )
    b_ch.on("message", lambda data: bob.receive(A, data))
    last = len(alice.entries) - 1
    start = time.perf_counter()
    bob.sync()
    try:
        while bob.core.durable_seq < last or bob.core.committed_seq < last:
            await asyncio.sleep(0.002)
            if time.perf_counter() - start > 120:
                raise RuntimeError("the assistant did not catch up within 120 s")
        return time.perf_counter() - start
    finally:
        await bob.close()
        for pc in pcs:
            await pc.close()


def sqlite_baseline(entries: list[Entry], directory: Path) -> float:
    with LogStore(directory / "baseline.sqlite") as store:
        for entry in entries:
            _ = entry.raw, entry.digest  # encoding is not what this baseline measures
        start = time.perf_counter()
        store.append(entries)
        return time.perf_counter() - start


def signature_baseline(entries: list[Entry]) -> tuple[float, int]:
    sequencer = lw.public_bytes(ALICE.key)
    checked = [(e, e.raw) for e in entries]
    start = time.perf_counter()
    count = 0
    for entry, _ in checked:
        assert entry.author_signature_ok()
        count += 1
        if entry.sequenced:
            assert entry.sequencer_signature_ok(sequencer)
            count += 1
    return time.perf_counter() - start, count


def measure(n: int = 10_000, runs: int = 3) -> dict[str, Any]:
    """Catch-up of an ``n``-entry log beside its two baselines; best of ``runs`` each."""
    alice = build_session(n)
    entries = list(alice.entries)
    import asyncio

    catch, parallel, sql, sig, wire = [], [], [], [], []
    signatures = 0
    workers = max(2, os.cpu_count() or 1)
    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / str(run)
            (directory / "a").mkdir(parents=True)
            (directory / "b").mkdir()
            catch.append(catch_up(alice, directory / "a"))
            wire.append(asyncio.run(catch_up_over_channel(alice, directory / "home")))
            with ThreadPoolExecutor(workers) as pool:
                parallel.append(catch_up(alice, directory / "b", pool))
            fresh = [lw.decode_entry(e.raw) for e in entries]  # nothing cached
            sql.append(sqlite_baseline(fresh, directory))
        fresh = [lw.decode_entry(e.raw) for e in entries]
        seconds, signatures = signature_baseline(fresh)
        sig.append(seconds)
    size = sum(len(e.raw) for e in entries)
    best = min(catch)
    return {
        "entries": len(entries),
        "bytes": size,
        "signatures": signatures,
        "runs": runs,
        "catchup_s": best,
        "channel_s": min(wire),
        "catchup_entries_per_s": len(entries) / best,
        "parallel_s": min(parallel),
        "workers": workers,
        "parallel_vs_signatures": min(parallel) / min(sig),
        "sqlite_s": min(sql),
        "signatures_s": min(sig),
        "vs_sqlite": best / min(sql),
        "vs_signatures": best / min(sig),
    }


def report(f: dict[str, Any]) -> list[str]:
    ms = 1000.0
    return [
        f"log catch-up: {f['entries']} entries ({f['bytes'] / 1e6:.1f} MB, "
        f"{f['signatures']} signatures), best of {f['runs']}",
        f"  joiner catches up (verify + SQLite)  {f['catchup_s'] * ms:8.1f} ms  "
        f"({f['catchup_entries_per_s']:,.0f} entries/s)",
        f"  assistant over an aiortc channel      {f['channel_s'] * ms:8.1f} ms  "
        f"({f['entries'] / f['channel_s']:,.0f} entries/s)",
        f"  same, signatures on {f['workers']} threads    {f['parallel_s'] * ms:8.1f} ms  "
        f"({f['entries'] / f['parallel_s']:,.0f} entries/s)",
        f"  SQLite, same bytes, one transaction   {f['sqlite_s'] * ms:8.1f} ms  "
        f"ratio {f['vs_sqlite']:.1f}x",
        f"  Ed25519 verification alone            {f['signatures_s'] * ms:8.1f} ms  "
        f"ratio {f['vs_signatures']:.2f}x",
    ]


def rows(f: dict[str, Any]) -> list[str]:
    """Markdown rows: | figure | PeerDesk | baseline | ratio | runs |."""
    ms = 1000.0
    n = f"{f['entries']} entries, best of {f['runs']}"
    return [
        f"| log catch-up ({f['entries']} entries) | {f['catchup_s'] * ms:.0f} ms "
        f"| SQLite write of the same bytes, one transaction {f['sqlite_s'] * ms:.0f} ms "
        f"| {f['vs_sqlite']:.1f}x | {n} |",
        f"| log catch-up ({f['entries']} entries) | {f['catchup_s'] * ms:.0f} ms "
        f"| Ed25519 verification of its {f['signatures']} signatures alone "
        f"{f['signatures_s'] * ms:.0f} ms | **{f['vs_signatures']:.2f}x** | {n} |",
        f"| log catch-up of a joining assistant, over an aiortc data channel "
        f"| {f['channel_s'] * ms:.0f} ms | Ed25519 verification of its signatures alone "
        f"{f['signatures_s'] * ms:.0f} ms | **{f['channel_s'] / f['signatures_s']:.2f}x** | {n} |",
        f"| log catch-up, signatures prefetched on {f['workers']} threads "
        f"| {f['parallel_s'] * ms:.0f} ms | Ed25519 verification alone, one thread "
        f"{f['signatures_s'] * ms:.0f} ms | {f['parallel_vs_signatures']:.2f}x | {n} |",
    ]


if __name__ == "__main__":
    figures = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    print("\n".join(report(figures)))
    print("\n".join(rows(figures)))
