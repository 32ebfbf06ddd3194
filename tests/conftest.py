"""Fixtures shared by the whole suite: real PostgreSQL and Redis, tokens, a gateway, Chromium."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio

from fake_model import FakeModel
from support.browser import Browser
from support.database import answers, configured_server_url, insert_session, temporary_database
from support.gateway import Gateway, start_gateway
from support.postgres import PostgresCluster
from support.redis import SHARED_URL as SHARED_REDIS_URL
from support.redis import RedisServer
from support.redis import answers as redis_answers

MakeToken = Callable[..., str]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server: ``TEST_DATABASE_URL`` if it answers, else a throwaway one."""
    configured = configured_server_url()
    if answers(configured):
        yield configured
        return
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.remove()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake() -> AsyncIterator[FakeModel]:
    """The OpenAI-compatible fake model (tests/fake_model.py), on the module's event loop, so a
    test can look at what it received and when the gateway hung up on it."""
    async with FakeModel() as model:
        yield model


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of the module's own, for tests that stop and start it."""
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, with the API's ``sessions`` table."""
    with temporary_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def make_token(database_url: str) -> MakeToken:
    """``make_token(user_id=None, logged_in=False, ttl_seconds=3600) -> token``."""

    def make(user_id: int | None = None, logged_in: bool = False, ttl_seconds: float = 3600) -> str:
        return insert_session(
            database_url, user_id=user_id, logged_in=logged_in, ttl_seconds=ttl_seconds
        )

    return make


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[Gateway]:
    """One gateway process on PostgreSQL, shared by the tests of a module."""
    process = start_gateway({"DATABASE_URL": database_url})
    yield process
    process.stop()


@pytest.fixture
def gateway_factory(database_url: str) -> Iterator[Callable[..., Gateway]]:
    """``gateway_factory(**env) -> Gateway``: a gateway with extra settings, stopped afterwards."""
    started: list[Gateway] = []

    def start(**env: str) -> Gateway:
        process = start_gateway({"DATABASE_URL": database_url, **env})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for the scale-out tests: the machine's if it answers, else a throwaway one."""
    if redis_answers():
        yield SHARED_REDIS_URL
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_prefix() -> str:
    """A channel and key prefix of this test's own, so parallel runs never hear each other."""
    return f"yektaws-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium of this test's own; fails (never skips) when Chromium is missing."""
    async with Browser() as running:
        yield running
