"""kopf's session rides out an apiserver that does not serve the custom resources yet."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from modelrollout.cli.operator import retry_unserved_paths

PATH = "/apis/modelrollout.dev/v1alpha1/namespaces/ml/modelrollouts"


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[str, list[str]]]:
    """Serves PATH as "404 page not found" (plain text) for its first two calls, then a list;
    a missing object is a JSON Status 404, as the real apiserver answers."""
    seen: list[str] = []

    async def rollouts(request: web.Request) -> web.Response:
        seen.append(request.method)
        if len(seen) <= 2:
            return web.Response(status=404, text="404 page not found\n")
        return web.json_response({"kind": "ModelRolloutList", "items": []})

    async def missing(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.json_response(
            {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}, status=404
        )

    async def unserved(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.Response(status=404, text="404 page not found\n")

    app = web.Application()
    app.router.add_get(PATH, rollouts)
    app.router.add_get(PATH + "/gone", missing)
    app.router.add_get("/apis/nothing.example/v1/things", unserved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def session(grace_s: float = 5.0) -> aiohttp.ClientSession:
    middleware = functools.partial(retry_unserved_paths, grace_s=grace_s, first_delay_s=0.01)
    return aiohttp.ClientSession(middlewares=(middleware,))


async def test_an_unserved_path_is_retried_until_it_is_served(
    apiserver: tuple[str, list[str]],
) -> None:
    url, seen = apiserver
    async with session() as s, s.get(url + PATH) as response:
        assert response.status == 200
        assert (await response.json())["kind"] == "ModelRolloutList"
    assert seen == ["GET", "GET", "GET"]


async def test_a_missing_object_is_a_404_at_once(apiserver: tuple[str, list[str]]) -> None:
    url, seen = apiserver
    async with session() as s, s.get(url + PATH + "/gone") as response:
        assert response.status == 404
        assert (await response.json())["reason"] == "NotFound"
    assert seen == ["GET"]


async def test_a_path_never_served_gives_its_404_after_the_grace(
    apiserver: tuple[str, list[str]],
) -> None:
    url, seen = apiserver
    async with session(grace_s=0.05) as s, s.get(url + "/apis/nothing.example/v1/things") as r:
        assert r.status == 404
        assert "page not found" in await r.text()
    assert 1 < len(seen) < 10
