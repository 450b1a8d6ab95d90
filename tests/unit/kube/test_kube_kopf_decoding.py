"""kopf reads watch lines and answers through modelrollout.kube.decoding: the same events and
documents as before (faster), and an undecodable object is left out instead of failing kopf."""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from modelrollout.kube.decoding import Undecodable
from modelrollout.kube.kopf_decoding import KOPF_API_MODULE, decode_answers, decode_watch_events
from tests.bad_input.deep import event, nested, rollout

EVENT = {
    "type": "MODIFIED",
    "object": {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "r", "namespace": "ml", "resourceVersion": "12", "generation": 3},
        "spec": {"model": {"name": "m", "version": "2.0.0"}, "replicas": 2},
        "status": {
            "history": [{"event": "StageEntered", "value": 0.0012, "big": 2**62, "ok": True}] * 3,
            "message": "stage canary-10 \u2013 ends 12:00:00Z \u00e9",
            "weights": {"stable": 90, "candidate": 10, "actualCandidate": None},
        },
    },
}


def test_kopfs_watch_lines_decode_to_the_same_events(monkeypatch: pytest.MonkeyPatch) -> None:
    api = importlib.import_module(KOPF_API_MODULE)
    monkeypatch.setattr(api, "json", json)  # restored after the test
    reports: list[Undecodable] = []
    assert decode_watch_events(reports.append) is True
    assert decode_watch_events(reports.append) is True  # twice is once
    line = json.dumps(EVENT, ensure_ascii=False).encode()
    # What kopf's stream() does with each line.
    assert api.json.loads(line.decode("utf-8")) == json.loads(line) == EVENT
    # A torn line is still the error kopf and aiohttp expect from the json module.
    with pytest.raises(json.JSONDecodeError):
        api.json.loads(line[:-5].decode("utf-8"))
    assert api.json.dumps is json.dumps  # everything else is the json module's
    deep = event("MODIFIED", rollout("deep", "9", spec=f'{{"t":{nested(1100)}}}'))
    assert api.json.loads(deep)["type"] == "BOOKMARK"
    assert [r.name for r in reports] == ["deep"]


def test_a_kopf_that_decodes_elsewhere_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("kopf_without_json")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert decode_watch_events(lambda _: None, module.__name__) is False
    assert not hasattr(module, "json")


LIST = (
    '{"kind":"ModelRolloutList","apiVersion":"modelrollout.dev/v1alpha1","metadata":'
    f'{{"resourceVersion":"9"}},"items":[{rollout("a", "1")},'
    f"{rollout('deep', '2', spec=nested(1100))}]}}"
)


@pytest.fixture
async def apiserver() -> AsyncIterator[str]:
    async def listing(request: web.Request) -> web.Response:
        if request.query.get("watch") == "true":
            return web.Response(text=LIST + "\n", content_type="application/json")
        return web.Response(text=LIST, content_type="application/json")

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="[not json", content_type="application/json")

    app = web.Application()
    app.router.add_get("/list", listing)
    app.router.add_get("/broken", plain)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_kopfs_answers_lose_only_their_undecodable_items(apiserver: str) -> None:
    reports: list[Undecodable] = []
    async with aiohttp.ClientSession(middlewares=(decode_answers(reports.append),)) as session:
        async with session.get(f"{apiserver}/list") as response:
            doc = await response.json()  # what kopf's api.get() does
        assert [i["metadata"]["name"] for i in doc["items"]] == ["a"]
        assert [r.name for r in reports] == ["deep"]
        async with session.get(f"{apiserver}/list?watch=true") as response:
            assert len(await response.content.readline()) == len(LIST) + 1  # streams untouched
        async with session.get(f"{apiserver}/broken") as response:
            with pytest.raises(json.JSONDecodeError):
                await response.json()  # not JSON: kopf's own error, as before
