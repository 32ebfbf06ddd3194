"""The Grafana board and the alert rules against a real Prometheus scraping real gateways.

Prometheus (Debian's) scrapes two gateways every second: a healthy one on PostgreSQL and Redis
with the fake model as its AI upstream, and a broken one whose session store and broker do not
answer. Traffic goes over both protocols twice (so that every counter exists *and* has grown
between two scrapes, which is what ``rate()`` needs): echoes, a push through the server API, an
AI answer and an AI failure, refused handshakes, disconnects. Then every panel query of
``grafana/yektaws.json`` and every alert expression of ``prometheus/alerts.yml`` is evaluated
through Prometheus' HTTP API and must return at least one series: no panel or alert names a
metric or label that does not exist. The alerts whose condition the test can bring about (store
down, broker degraded, reject spike, AI error ratio) must return a series for the whole
expression, on the gateway that has the problem.

The recovery counters have no series until a client resumes, so each round also cuts a native
client's connection, pushes while it is away, and resumes it (and tries a resume that cannot be
honoured, for the failure ratio).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from fake_model import FakeModel
from support.clients import connect
from support.cluster import API_KEY, call_api
from support.gateway import REPO, Gateway, free_port, start_gateway
from support.prometheus import SCRAPE_INTERVAL, PrometheusServer
from support.recovery import RecoveringClient
from support.tcpproxy import CuttableProxy

pytestmark = pytest.mark.timeout(180)
#: The tests share the module's event loop, where the set-up (and the fake model) live.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

DASHBOARD = REPO / "grafana" / "yektaws.json"
ALERTS = REPO / "prometheus" / "alerts.yml"
#: What Grafana puts in place of the dashboard's variables when it runs a query.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$instance": ".*"}
#: The alerts this test brings about, and on which gateway ("healthy" or "broken").
PROVOKED = {
    "YektawsSessionStoreDown": "broken",
    "YektawsBrokerDegraded": "broken",
    "YektawsRejectSpike": "healthy",
    "YektawsAIErrorRatio": "healthy",
}
#: Refused handshakes in the second round: YektawsRejectSpike's 1/s over its 2-minute window.
REJECT_BURST = 300
#: Refused handshakes in flight at once.
REJECT_CONCURRENCY = 25


def _panel_queries() -> list[Any]:
    dashboard = json.loads(DASHBOARD.read_text())
    params = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            params.append(pytest.param(expr, id=f"{panel['title']}/{target['refId']}"))
    return params


def _alert_names() -> list[Any]:
    # Names only, at collection time; the expressions come from Prometheus' own parse of the file.
    names = re.findall(r"^\s*- alert: (\w+)\s*$", ALERTS.read_text(), re.MULTILINE)
    return [pytest.param(name, id=name) for name in names]


def _grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _measurement(expr: str) -> str:
    """The alert's measurement: its expression without the final comparison to a number."""
    match = re.fullmatch(r"(.*\S)\s*(?:==|!=|>=|<=|>|<)\s*[0-9.]+\s*", expr, re.DOTALL)
    assert match, f"an alert is '<measurement> <comparison> <number>', not: {expr}"
    return match.group(1)


@dataclass
class Setup:
    prometheus: PrometheusServer
    healthy: Gateway
    broken: Gateway

    def instance(self, gateway: Gateway) -> str:
        return f"127.0.0.1:{gateway.port}"


async def _traffic(healthy: Gateway, fake: FakeModel, make_token: Any, rejects: int) -> None:
    """One round over both protocols: every kind of event the panels count."""
    native = await connect("native-websocket", healthy.http_url, make_token(user_id=9001))
    sio = await connect("socket.io", healthy.http_url, make_token(user_id=9001))
    try:
        for client in (native, sio):
            await client.expect("connected")
            assert (await client.request("echo", {"n": 1}))["received"] == {"n": 1}
            await client.request("ping", reply="pong")
        status, body = await call_api(
            healthy, "POST", "/emit", {"to": "user:9001", "event": "notice", "data": {"x": 1}}
        )
        assert status == 200, body
        assert await native.expect("notice") == {"x": 1}
        assert await sio.expect("notice") == {"x": 1}
        await native.send("ai:chat", {"message": "hello", "locale": "en"})
        assert (await native.expect("ai:response:complete", timeout=10))["fullResponse"]
        await sio.send("ai:chat", {"message": "[[fail=500]]", "locale": "en"})
        assert (await sio.expect("ai:response:error", timeout=10))["code"] == "upstream_failed"
    finally:
        await native.close()
        await sio.close()
    await _refused_handshakes(healthy, rejects)
    await _resume(healthy, make_token)


async def _resume(gateway: Gateway, make_token: Any) -> None:
    """A native client cut off, pushed to while away, resumed; then a resume that fails."""
    user_id = 9100 + uuid.uuid4().int % 800
    token = make_token(user_id=user_id, logged_in=True)
    proxy = CuttableProxy(gateway.port)
    client = RecoveringClient()
    try:
        hello = await client.connect(proxy.port, token)
        proxy.cut()
        await gateway.wait_for_log_async("disconnect", socketId=hello["socketId"])
        status, _ = await call_api(
            gateway, "POST", "/emit", {"to": f"user:{user_id}", "event": "notice", "data": {}}
        )
        assert status == 200
        assert (await client.connect(gateway.port, token, resume=True))["recovered"] is True
        assert (await client.next())["event"] == "notice"
        client.pid = "no-such-state"
        assert (await client.connect(gateway.port, token, resume=True))["recovered"] is False
    finally:
        await client.close()
        proxy.close()


async def _refused_handshakes(gateway: Gateway, count: int) -> None:
    """``count`` native handshakes with a token that is no session's: each is refused, 401."""
    async with aiohttp.ClientSession() as http:

        async def refused() -> None:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
                await http.ws_connect(f"{gateway.ws_url}/ws?token=not-a-session")
            assert refusal.value.status == 401

        for start in range(0, count, REJECT_CONCURRENCY):
            batch = range(start, min(count, start + REJECT_CONCURRENCY))
            await asyncio.gather(*(refused() for _ in batch))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(database_url: str, redis_url: str, make_token: Any) -> AsyncIterator[Setup]:
    async with FakeModel() as fake:
        healthy = start_gateway(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "REDIS_PREFIX": f"yektaws-test-{uuid.uuid4().hex[:12]}",
                "ADMIN_API_KEY": API_KEY,
                "ADMIN_PORT": str(free_port()),
                "AI_BASE_URL": fake.base_url,
                "AI_MODEL": "fake-model",
            }
        )
        nobody = free_port()  # nothing listens here: neither PostgreSQL nor Redis answers
        broken = start_gateway(
            {
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{nobody}/test",
                "SESSION_STORE_TIMEOUT": "1",
                "REDIS_URL": f"redis://127.0.0.1:{nobody}/0",
            }
        )
        try:
            with PrometheusServer(
                [f"127.0.0.1:{g.port}" for g in (healthy, broken)], [ALERTS]
            ) as prometheus:
                setup = Setup(prometheus, healthy, broken)
                await _until(prometheus, 'count(up{job="yektaws"} == 1) == 2')
                await _traffic(healthy, fake, make_token, rejects=1)
                # Round two only once round one's series have been scraped: rates need growth.
                await _until(prometheus, 'yektaws_ai_streams_total{outcome="upstream_failed"}')
                await _until(prometheus, 'yektaws_rejects_total{reason="invalid_token"}')
                await _traffic(healthy, fake, make_token, rejects=REJECT_BURST)
                await _until(prometheus, 'yektaws_ai_streams_total{outcome="upstream_failed"} >= 2')
                await _until(prometheus, f"sum(yektaws_rejects_total) >= {REJECT_BURST + 1}")
                await asyncio.sleep(2 * SCRAPE_INTERVAL)  # and one scrape after the last
                yield setup
        finally:
            healthy.stop()
            broken.stop()


async def _until(prometheus: PrometheusServer, expr: str, timeout: float = 30.0) -> Any:
    return await asyncio.to_thread(prometheus.wait_for, expr, timeout)


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in result.stdout


@in_module_loop
async def test_prometheus_loads_and_evaluates_every_rule(setup: Setup) -> None:
    groups = setup.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(p.id for p in _alert_names())
    for rule in rules:
        assert rule["health"] == "ok", rule


@in_module_loop
@pytest.mark.parametrize("expr", _panel_queries())
async def test_every_panel_query_returns_a_series(setup: Setup, expr: str) -> None:
    assert setup.prometheus.query(_grafana(expr)), expr


def _rule(setup: Setup, name: str) -> dict[str, Any]:
    for group in setup.prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            if rule["name"] == name:
                return rule
    raise AssertionError(f"Prometheus did not load {name}")


@in_module_loop
@pytest.mark.parametrize("name", _alert_names())
async def test_every_alert_measures_something_that_exists(setup: Setup, name: str) -> None:
    expr = _rule(setup, name)["query"]
    assert setup.prometheus.query(_measurement(expr)), expr


@in_module_loop
@pytest.mark.parametrize("name", sorted(PROVOKED))
async def test_the_provoked_alerts_hold_on_the_gateway_that_has_the_problem(
    setup: Setup, name: str
) -> None:
    expr = _rule(setup, name)["query"]
    gateway = setup.healthy if PROVOKED[name] == "healthy" else setup.broken
    result = await _until(setup.prometheus, expr)
    assert {series["metric"]["instance"] for series in result} == {setup.instance(gateway)}


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and panel["description"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], target
