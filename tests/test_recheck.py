"""Live session checks: a session deleted or expired while connected ends its connections."""

from __future__ import annotations

import asyncio

from support.clients import NativeClient, SocketIOClient
from support.database import delete_session


async def test_deleted_session_closed_within_one_interval(
    gateway_factory, database_url, make_token
) -> None:
    gateway = gateway_factory(SESSION_RECHECK_INTERVAL="0.5", SESSION_CACHE_TTL="0")
    revoked_native, revoked_sio, kept = (make_token(user_id=n) for n in (1, 2, 3))
    native = await NativeClient.open(f"{gateway.ws_url}/ws?token={revoked_native}")
    sio = await SocketIOClient.open(gateway.http_url, token=revoked_sio)
    survivor = await NativeClient.open(f"{gateway.ws_url}/ws?token={kept}")
    for client in (native, sio, survivor):
        await client.expect("connected")
    delete_session(database_url, revoked_native)
    delete_session(database_url, revoked_sio)

    assert await native.wait_closed(timeout=2) == 4001
    assert native.ws.close_code == 4001
    expired = await sio.expect("session:expired", timeout=2)
    assert expired == {"reason": "session expired"}
    await asyncio.wait_for(sio.disconnected.wait(), 2)
    assert (await survivor.request("echo", "still here"))["received"] == "still here"
    line = gateway.wait_for_log("disconnect", code=4001)
    assert line["reason"] == "session expired"
    for client in (native, sio, survivor):
        await client.close()


async def test_expired_session_closed_and_queries_bounded_by_batch(
    gateway_factory, make_token
) -> None:
    gateway = gateway_factory(
        SESSION_RECHECK_INTERVAL="0.5", SESSION_RECHECK_BATCH="10", SESSION_CACHE_TTL="0"
    )
    short = make_token(user_id=9, ttl_seconds=1.5)
    clients = [await NativeClient.open(f"{gateway.ws_url}/ws?token={short}")]
    clients += [
        await NativeClient.open(f"{gateway.ws_url}/ws?token={make_token()}") for _ in range(24)
    ]
    for client in clients:
        await client.expect("connected")
    assert await clients[0].wait_closed(timeout=3) == 4001
    rounds = [entry for entry in gateway.logs() if entry.get("event") == "session_recheck"]
    assert rounds and all(entry["queries"] == -(-entry["tokens"] // 10) for entry in rounds)
    assert max(entry["tokens"] for entry in rounds) == 25
    for client in clients:
        await client.close()


async def test_store_outage_during_recheck_closes_nobody(make_token) -> None:
    from support.database import insert_session, temporary_database
    from support.gateway import start_gateway
    from support.postgres import PostgresCluster

    cluster = PostgresCluster()
    cluster.start()
    try:
        with temporary_database(cluster.url) as url:
            gateway = start_gateway({"DATABASE_URL": url, "SESSION_RECHECK_INTERVAL": "0.3"})
            client = await NativeClient.open(f"{gateway.ws_url}/ws?token={insert_session(url)}")
            await client.expect("connected")
            cluster.stop()
            await asyncio.sleep(1.0)  # several failed rounds
            assert (await client.request("echo", 1))["received"] == 1
            gateway.wait_for_log("session_recheck_skipped")
            cluster.start()
            await client.close()
            gateway.stop()
    finally:
        cluster.remove()
