"""A tiny stand-in for the Kubernetes API on 127.0.0.1, enough for the plugin's own calls.

It answers like the real apiserver does (Status bodies on 404, watch streams as JSON lines)
and records every request, so tests check what the plugin sent without a cluster. The real
apiserver is exercised by e2e/test_plugin_lab.py.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

BASE = "/apis/modelrollout.dev/v1alpha1"
OBJECT = re.compile(rf"^{BASE}/namespaces/([^/]+)/modelrollouts/([^/]+)$")
NAMESPACED = re.compile(rf"^{BASE}/namespaces/([^/]+)/modelrollouts$")
CLUSTER = f"{BASE}/modelrollouts"
SSR = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeApiserver:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    crd_installed: bool = True
    whoami: str | None = None  # None: SelfSubjectReview unknown (404), as before Kubernetes 1.28
    watch_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    hold_watch: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def add(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(meta["namespace"], meta["name"])] = obj

    def sent(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]


def _status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def _handler(fake: FakeApiserver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # watch streams are chunked, as from the real apiserver

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Request:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
            fake.requests.append(request)
            return request

        def _not_found(self, namespace: str, name: str) -> None:
            self._reply(
                404,
                _status(
                    404,
                    "NotFound",
                    f'modelrollouts.modelrollout.dev "{name}" not found',
                    {"name": name, "group": "modelrollout.dev", "kind": "modelrollouts"},
                ),
            )

        def _no_crd(self) -> None:
            self._reply(
                404,
                _status(404, "NotFound", "the server could not find the requested resource", {}),
            )

        def _list(self, items: list[dict[str, Any]]) -> None:
            self._reply(
                200,
                {
                    "apiVersion": "modelrollout.dev/v1alpha1",
                    "kind": "ModelRolloutList",
                    "metadata": {"resourceVersion": "100"},
                    "items": items,
                },
            )

        def _watch(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            events, fake.watch_events = fake.watch_events, []
            for kind, obj in events:
                line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            fake.hold_watch.wait(timeout=30)  # an open stream with nothing new, like the real one
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

        def do_GET(self) -> None:
            request = self._record()
            if not fake.crd_installed and request.path.startswith(BASE):
                self._no_crd()
                return
            if (m := OBJECT.match(request.path)) is not None:
                obj = fake.objects.get((m.group(1), m.group(2)))
                self._reply(200, obj) if obj else self._not_found(m.group(1), m.group(2))
            elif (m := NAMESPACED.match(request.path)) is not None:
                if request.query.get("watch") == ["true"]:
                    self._watch()
                else:
                    self._list([o for (ns, _), o in fake.objects.items() if ns == m.group(1)])
            elif request.path == CLUSTER:
                self._list(list(fake.objects.values()))
            else:
                self._reply(404, _status(404, "NotFound", "not here"))

        def do_PATCH(self) -> None:
            request = self._record()
            m = OBJECT.match(request.path)
            obj = fake.objects.get((m.group(1), m.group(2))) if m else None
            if m is None or obj is None:
                self._not_found(m.group(1) if m else "", m.group(2) if m else "")
                return
            obj["metadata"].setdefault("annotations", {}).update(
                request.body["metadata"]["annotations"]
            )
            self._reply(200, obj)

        def do_POST(self) -> None:
            request = self._record()
            if request.path == SSR and fake.whoami is not None:
                self._reply(
                    201,
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "SelfSubjectReview",
                        "metadata": {},
                        "status": {"userInfo": {"username": fake.whoami}},
                    },
                )
            else:
                self._reply(
                    404,
                    _status(404, "NotFound", "the server could not find the requested resource"),
                )

    return Handler


@contextmanager
def running(fake: FakeApiserver) -> Iterator[FakeApiserver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        fake.hold_watch.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_kubeconfig(
    path: Path, server: str, *, namespace: str | None = "ml", user: str = "alice"
) -> Path:
    context: dict[str, Any] = {"cluster": "fake", "user": user}
    if namespace is not None:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": user, "user": {"token": "not-a-real-token"}}],
                "contexts": [
                    {"name": "fake-ctx", "context": context},
                    {
                        "name": "other-ctx",
                        "context": {"cluster": "fake", "user": user, "namespace": "other"},
                    },
                ],
                "current-context": "fake-ctx",
            }
        )
    )
    return path
