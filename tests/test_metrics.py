"""``/metrics``: scraped before and after a scripted session, every counter moves as it should."""

from __future__ import annotations

import re

import aiohttp

from support.clients import connect
from support.gateway import Gateway
from support.handshake import handshake


async def scrape(gateway: Gateway) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.http_url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_counters_follow_a_scripted_session(gateway_factory, make_token) -> None:
    gateway = gateway_factory()
    before = await scrape(gateway)
    native = await connect("native-websocket", gateway.http_url, make_token(user_id=1))
    sio = await connect("socket.io", gateway.http_url, make_token(user_id=2))
    await native.expect("connected")
    await sio.expect("connected")
    during = await scrape(gateway)
    for _ in range(3):
        await native.request("echo", 1)
    await sio.request("ping", reply="pong")
    await native.send("no-such-event")
    await native.expect("error")
    await native.close()
    await sio.close()
    assert (await handshake(f"{gateway.http_url}/ws?token={'q' * 43}")).status == 401
    gateway.wait_for_log("disconnect", protocol="socket.io")
    after = await scrape(gateway)

    assert during['yektaws_connections_open{protocol="native-websocket"}'] == 1
    assert during['yektaws_connections_open{protocol="socket.io"}'] == 1
    assert after['yektaws_connections_open{protocol="native-websocket"}'] == 0
    assert after['yektaws_connections_open{protocol="socket.io"}'] == 0
    assert delta(before, after, 'yektaws_connects_total{protocol="native-websocket"}') == 1
    assert delta(before, after, 'yektaws_connects_total{protocol="socket.io"}') == 1
    rejected = 'yektaws_rejects_total{protocol="native-websocket",reason="invalid_token"}'
    assert delta(before, after, rejected) == 1
    closed = 'yektaws_disconnects_total{code="1000",protocol="native-websocket"}'
    assert delta(before, after, closed) == 1
    assert delta(before, after, 'yektaws_events_in_total{event="echo"}') == 3
    assert delta(before, after, 'yektaws_events_in_total{event="ping"}') == 1
    assert delta(before, after, 'yektaws_events_in_total{event="unknown"}') == 1
    assert delta(before, after, 'yektaws_events_out_total{event="echo_response"}') == 3
    assert delta(before, after, 'yektaws_events_out_total{event="connected"}') == 2
    assert delta(before, after, 'yektaws_handler_seconds_count{event="echo"}') == 3
    assert delta(before, after, "yektaws_session_store_seconds_count") >= 3
    assert "yektaws_event_loop_lag_seconds" in after


async def test_no_label_carries_a_token_or_client_text(gateway, make_token) -> None:
    token = make_token(user_id=4242)
    async with await connect("native-websocket", gateway.http_url, token) as client:
        await client.send("event-named-by-a-client-" + token[:8])
        await client.expect("error")
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.http_url}/metrics") as r:
        text = await r.text()
    assert token not in text and token[:8] not in text
    assert "4242" not in text
