"""`modelrollout run`: the operator process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from modelrollout import __version__
from modelrollout.api.models import GROUP, PLURAL
from modelrollout.health import Limits, Liveness, Watchdog
from modelrollout.kube.kopf_decoding import decode_answers, decode_watch_events

log = logging.getLogger(__name__)

API_CONNECTIONS = 32
"""Connections to the apiserver (urllib3 pool) and threads making the reconciler's calls."""
KOPF_CONNECTIONS = 32
"""kopf's connections to the apiserver, besides three per watched namespace (its watches)."""
UNSERVED_GRACE_S = 60.0
"""How long a path the apiserver does not serve (yet) is retried before the 404 is passed on."""


class EssenceWithoutStatus(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the essence a spec change is detected against), built the same way but
    without deep-copying the status and metadata first: kopf copies the whole body, audit trail
    and managedFields included, on every watch event and then throws them away (6% of the
    operator's CPU at 1,000 rollouts, docs/performance.md). Same prefix and key as kopf's
    default, so the annotation written by an earlier version is read as before."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if extra_fields:  # a handler on status fields needs them in the essence
            return super().build(body=body, extra_fields=extra_fields)
        # What kopf's build reads of the body; it copies the rest only to throw it away.
        meta = body.get("metadata") or {}
        light: Any = {k: v for k, v in body.items() if k not in ("status", "metadata")}
        light["metadata"] = {
            k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta
        }
        return super().build(body=kopf.Body(light))


async def retry_unserved_paths(
    request: aiohttp.ClientRequest,
    handler: aiohttp.ClientHandlerType,
    *,
    grace_s: float = UNSERVED_GRACE_S,
    first_delay_s: float = 0.2,
) -> aiohttp.ClientResponse:
    """aiohttp middleware of kopf's session: retry a plain-text ``404 page not found``.

    A restarted apiserver answers the paths of custom resources that way for a moment, until its
    CRD handlers are installed (an object that does not exist is a JSON Status instead). kopf
    takes a 404 on a watch as fatal and would stop the operator; a kubelet would restart it, and
    nothing would be lost (state lives in .status), but waiting is quicker and quieter. After
    ``grace_s`` the 404 is passed on: the resource is really gone.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    delay = first_delay_s
    while True:
        response = await handler(request)
        unserved = response.status == 404 and response.content_type != "application/json"
        if not unserved or loop.time() + delay > deadline:
            return response
        response.release()
        log.warning(
            "apiserver does not serve %s %s (yet); retrying in %.1fs",
            request.method,
            request.url.path,
            delay,
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelrollout", description="ModelRollout operator")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    run.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only handle ModelRollouts with this label (repeatable; for sharding)",
    )
    run.add_argument(
        "--prometheus-url",
        default=os.environ.get("MODELROLLOUT_PROMETHEUS_URL"),
        help="default Prometheus address for rollouts that name none",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="auto", choices=["json", "console", "auto"])
    run.add_argument(
        "--metrics-port", type=int, default=8081, help="port for /metrics and /healthz (0 = off)"
    )
    run.add_argument("--metrics-host", default="0.0.0.0")
    peering = run.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="kopf peering name: one active replica, the others standby",
    )
    peering.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest live one is active (default: random)",
    )
    run.add_argument(
        "--peering-lifetime",
        type=_positive_int,
        default=60,
        metavar="SECONDS",
        help="how long a replica's peering record stays valid: a standby takes over at most "
        "this long after the active replica died (default 60)",
    )
    defaults = Limits()
    for flag, default, help_text in (
        ("--liveness-loop-stall", defaults.loop_stall_s,
         "/healthz fails when the event loop has been blocked this long"),
        ("--liveness-watch-down", defaults.watch_down_s,
         "/healthz fails when a watch has failed to reconnect for this long"),
        ("--liveness-reconcile-stall", defaults.reconcile_stall_s,
         "/healthz fails when work has been due this long with no reconcile completing"),
        ("--liveness-exit-after", defaults.exit_after_s,
         "the operator exits (status 70) once /healthz has failed this long; 0: never"),
    ):  # fmt: skip
        run.add_argument(
            flag, type=_seconds, default=default, metavar="SECONDS",
            help=f"{help_text} (default {default:g})",
        )  # fmt: skip
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--history-limit", type=int, default=100, help="audit entries kept in status")
    run.add_argument(
        "--max-concurrent-reconciles",
        type=_positive_int,
        default=None,
        metavar="N",
        help="reconciles in flight at once; the others wait their turn (bounds the memory of a "
        "burst, docs/performance.md; default 256)",
    )
    run.add_argument(
        "--watch-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read the slots' Deployments and Services and the routes from watches instead of "
        "GETs on every tick",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a whole number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(
        loop_stall_s=args.liveness_loop_stall,
        watch_down_s=args.liveness_watch_down,
        reconcile_stall_s=args.liveness_reconcile_stall,
        exit_after_s=args.liveness_exit_after,
    )


def _selectors(raw: Sequence[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--selector wants KEY=VALUE, got {item!r}")
        result[key] = value
    return result


def _api_client(kubeconfig: str | None) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        try:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    configuration.connection_pool_maxsize = API_CONNECTIONS
    return k8s.ApiClient(configuration)


def run(args: argparse.Namespace) -> None:
    from modelrollout import handlers, observability
    from modelrollout.app import build_memo, build_quarantine
    from modelrollout.handlers import Trigger
    from modelrollout.kube.cache import ObjectCache
    from modelrollout.routing import gateway_api, istio

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    observability.configure_logging(args.log_level, args.log_format)
    api_client = _api_client(args.kubeconfig)
    selectors = _selectors(args.selector)
    namespaces = list(args.namespace)
    routes = [(m.GROUP, m.VERSION, m.PLURAL) for m in (gateway_api, istio)]
    cache = ObjectCache(api_client, namespaces, routes) if args.watch_cache else None
    memo = build_memo(
        api_client,
        prometheus_url=args.prometheus_url,
        history_limit=args.history_limit,
        cache=cache,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
    )
    liveness = memo.liveness = Liveness(limits_from(args))
    quarantine = memo.quarantine = build_quarantine()

    @kopf.on.login()
    async def login(**_: Any) -> kopf.AiohttpSession:
        """kopf talks to the apiserver with exactly the identity our own client uses, through a
        session with a bounded connection pool: kopf's own has none, so a burst of Event posts
        opened one TLS connection per request, each holding a 256 KiB buffer (25 MiB at 100
        rollouts, docs/performance.md). Room for every watch stream plus the requests."""
        cfg = api_client.configuration
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token and token.lower().startswith("bearer "):
            token = token[7:]
        info = kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            token=token or None,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            default_namespace=namespaces[0] if namespaces else None,
        )
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=KOPF_CONNECTIONS + 3 * len(namespaces), ssl=info.as_ssl_context()
            ),
            headers=info.as_http_headers(),
            middlewares=(
                liveness.track_watches(),
                retry_unserved_paths,
                decode_answers(quarantine.report),
            ),
        )
        return kopf.AiohttpSession(
            server=info.server, default_namespace=info.default_namespace, aiohttp_session=session
        )

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own events are explicit; kopf's are noise
        settings.persistence.finalizer = "modelrollout.dev/finalizer"
        settings.persistence.diffbase_storage = EssenceWithoutStatus()
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.execution.max_workers = 32
        settings.batching.worker_limit = None
        if selectors:
            # Server-side filtering: this process never even sees other shards' rollouts.
            settings.watching.label_selectors[GROUP, PLURAL] = ",".join(
                f"{k}={v}" for k, v in sorted(selectors.items())
            )
        if args.peering:
            settings.peering.name = args.peering
            settings.peering.mandatory = True
            # kopf pauses every peer when priorities tie, so each replica needs its own.
            settings.peering.priority = (
                args.priority if args.priority is not None else random.randint(1, 2**31)
            )
            settings.peering.lifetime = args.peering_lifetime
        if args.metrics_port:
            observability.start_metrics_server(
                args.metrics_port, args.metrics_host, problems=liveness.problems
            )

    assert handlers  # registrations happen at import
    if not decode_watch_events(quarantine.report):
        log.warning("kopf's watch decoding was not found where expected; it keeps its own")

    async def operate() -> None:
        # The reconciler's Kubernetes calls run in asyncio's default executor (to_thread), whose
        # stock size is min(32, CPUs + 4): 6 threads on a 2-CPU node queue the calls of a few
        # hundred rollouts behind each other. One thread per pooled connection instead.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=API_CONNECTIONS, thread_name_prefix="kube")
        )
        if cache is not None:
            loop = asyncio.get_running_loop()

            def wake(namespace: str, rollout: str, why: Trigger) -> None:
                wakeup = memo.wakeups.get((namespace, rollout))
                if wakeup is not None:
                    wakeup.set(why)

            # A Deployment of a rollout changed (a replica became ready, ...) or someone edited
            # its route: wake its daemon now rather than at its next poll. From the watch
            # threads, so through the loop.
            def wake_soon(why: Trigger) -> Callable[[str, str], None]:
                def call(namespace: str, rollout: str) -> None:
                    loop.call_soon_threadsafe(wake, namespace, rollout, why)

                return call

            cache.on_workload_change = wake_soon(Trigger.WORKLOAD)
            cache.on_route_change = wake_soon(Trigger.ROUTE)
            cache.start()
        heartbeat = asyncio.ensure_future(liveness.heartbeat())
        watchdog = Watchdog(liveness).start()
        try:
            await kopf.operator(
                clusterwide=not namespaces,
                namespaces=namespaces,
                standalone=not args.peering,
                peering_name=args.peering,
                memo=memo,
            )
        finally:
            watchdog.stop()
            heartbeat.cancel()
            if cache is not None:
                cache.stop()

    asyncio.run(operate())


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        try:
            run(args)
        except KeyboardInterrupt:
            sys.exit(130)


if __name__ == "__main__":
    main()
