"""Pure route logic of the lab gateway: turn an HTTPRoute or a VirtualService into a route table,
pick the rule a request matches, pick a backend by weight, decide mirroring.

No I/O here: the gateway feeds objects in (as the API server returns them, plain dicts) and
random numbers in, so everything is testable with tables.

Semantics, following the upstream specs:

Gateway API HTTPRoute (gateway.networking.k8s.io/v1)
  - the request goes to the rule holding the best matching ``matches[]`` entry (precedence:
    Exact path, then the longest PathPrefix, then method, then most headers, then most query
    params, then rule order); a rule without matches matches everything (PathPrefix "/");
  - ``backendRefs[].weight`` (default 1) splits it; a backendRef that is not a core Service is
    invalid and its share of the traffic answers 500; all weights 0 (or no backendRefs) -> 500;
  - each ``filters[]`` entry of type RequestMirror copies the request to
    ``requestMirror.backendRef`` for ``percent`` % or ``fraction.numerator/denominator`` of the
    requests (neither set: all of them); RequestHeaderModifier edits the forwarded headers;
  - ``timeouts.request`` bounds the backend call.
Istio VirtualService (networking.istio.io/v1beta1)
  - the first ``http[]`` entry with a matching ``match[]`` (or none) wins;
  - ``route[].destination.host`` (``svc``, ``svc.ns``, ``svc.ns.svc.cluster.local``) split by
    ``weight``; a single destination takes everything;
  - ``mirror`` for ``mirrorPercentage.value`` % (absent: 100, the deprecated ``mirrorPercent``
    is honoured), and ``mirrors[]`` with ``percentage.value`` each;
  - ``headers.request`` {set, add, remove} and ``timeout``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import durationpy

Obj = Mapping[str, Any]


class RouteError(ValueError):
    """The route object cannot be served; the message names the field and the problem."""


class RouteKind(StrEnum):
    HTTPROUTE = "httproute"
    VIRTUALSERVICE = "virtualservice"

    @classmethod
    def parse(cls, text: str) -> RouteKind:
        norm = text.strip().lower()
        aliases = {
            "httproute": cls.HTTPROUTE,
            "httproutes": cls.HTTPROUTE,
            "virtualservice": cls.VIRTUALSERVICE,
            "virtualservices": cls.VIRTUALSERVICE,
            "vs": cls.VIRTUALSERVICE,
        }
        if norm not in aliases:
            raise RouteError(f"route kind must be httproute or virtualservice, got {text!r}")
        return aliases[norm]


@dataclass(frozen=True)
class HeaderEdit:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def apply(self, headers: dict[str, str]) -> dict[str, str]:
        """Return a copy of ``headers`` (lower-case names) with the edit applied."""
        out = dict(headers)
        for name, value in self.set:
            out[name.lower()] = value
        for name, value in self.add:
            key = name.lower()
            out[key] = f"{out[key]},{value}" if key in out else value
        for name in self.remove:
            out.pop(name.lower(), None)
        return out

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True)
class Backend:
    """A weighted destination. ``invalid`` says why traffic to it cannot be served."""

    service: str
    namespace: str
    weight: int
    port: int | None = None
    headers: HeaderEdit = field(default_factory=HeaderEdit)
    invalid: str | None = None


@dataclass(frozen=True)
class Mirror:
    service: str
    namespace: str
    percent: float  # 0..100 of the requests that reach the rule
    port: int | None = None


@dataclass(frozen=True)
class StringMatch:
    """Exact / Prefix / RegularExpression match of one string."""

    kind: str  # "Exact" | "Prefix" | "RegularExpression"
    value: str

    def matches(self, text: str | None) -> bool:
        if text is None:
            return False
        if self.kind == "Exact":
            return text == self.value
        if self.kind == "Prefix":
            return text.startswith(self.value)
        return re.fullmatch(self.value, text) is not None


@dataclass(frozen=True)
class Match:
    path: StringMatch | None = None  # kind "PathPrefix" is element-wise, as Gateway API says
    method: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query: tuple[tuple[str, StringMatch], ...] = ()


@dataclass(frozen=True)
class Request:
    method: str = "POST"
    path: str = "/predict"
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    index: int
    name: str
    matches: tuple[Match, ...]  # empty: matches every request
    backends: tuple[Backend, ...]
    mirrors: tuple[Mirror, ...] = ()
    headers: HeaderEdit = field(default_factory=HeaderEdit)
    timeout_s: float | None = None


@dataclass(frozen=True)
class RouteTable:
    kind: RouteKind
    namespace: str
    name: str
    rules: tuple[Rule, ...]
    generation: int = 0
    resource_version: str = ""

    def select(self, request: Request) -> Rule | None:
        """The rule that serves ``request``, or None (no rule matches: 404)."""
        if self.kind is RouteKind.VIRTUALSERVICE:
            for rule in self.rules:
                if not rule.matches or any(_match(m, request) for m in rule.matches):
                    return rule
            return None
        best: tuple[tuple[int, int, int, int, int, int, int], Rule] | None = None
        for rule in self.rules:
            matches = rule.matches or (Match(path=StringMatch("PathPrefix", "/")),)
            for mi, m in enumerate(matches):
                if _match(m, request):
                    key = (*_gateway_precedence(m), rule.index, mi)
                    if best is None or key < best[0]:
                        best = (key, rule)
        return best[1] if best else None


def _gateway_precedence(m: Match) -> tuple[int, int, int, int, int]:
    """Sort key (smaller wins) of a Gateway API match, per the HTTPRoute precedence rules."""
    if m.path is None:
        path_rank, length = 1, -1
    elif m.path.kind == "Exact":
        path_rank, length = 0, -len(m.path.value)
    elif m.path.kind == "PathPrefix":
        path_rank, length = 1, -len(m.path.value)
    else:
        path_rank, length = 2, 0
    return (path_rank, length, 0 if m.method else 1, -len(m.headers), -len(m.query))


def _path_prefix(prefix: str, path: str) -> bool:
    """Gateway API PathPrefix: element-wise, so /abc matches /abc and /abc/d but not /abcd."""
    if prefix in ("", "/"):
        return True
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/")


def _match(m: Match, req: Request) -> bool:
    path = req.path.split("?", 1)[0]
    if m.path is not None:
        if m.path.kind == "PathPrefix":
            if not _path_prefix(m.path.value, path):
                return False
        elif not m.path.matches(path):
            return False
    if m.method is not None and not m.method.matches(req.method.upper()):
        return False
    for name, sm in m.headers:
        if not sm.matches(req.headers.get(name)):
            return False
    for name, sm in m.without_headers:
        if sm.matches(req.headers.get(name)):
            return False
    return all(sm.matches(req.query.get(name)) for name, sm in m.query)


def weighted_choice(backends: Sequence[Backend], r: float) -> Backend | None:
    """Pick a backend with probability weight/total, using ``r`` uniform in [0, 1).

    None when there is nothing to pick (no backends or all weights 0)."""
    total = sum(b.weight for b in backends)
    if total <= 0:
        return None
    point = r * total
    acc = 0
    for b in backends:
        if b.weight <= 0:
            continue
        acc += b.weight
        if point < acc:
            return b
    return next(b for b in reversed(backends) if b.weight > 0)  # r == 1.0 from a sloppy caller


def should_mirror(mirror: Mirror, r: float) -> bool:
    """True for ``mirror.percent`` % of the values of ``r`` uniform in [0, 1)."""
    return r * 100.0 < mirror.percent


# --- parsing helpers -------------------------------------------------------------------------


def _get(obj: Obj, key: str, where: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool and bool not in _tuple(kind):
        raise RouteError(f"{where}.{key} must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise RouteError(f"{where}.{key} must be {_kind_name(kind)}, got {value!r}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
    }
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kind))


def _duration_s(text: str, where: str) -> float:
    try:
        return float(durationpy.from_str(text).total_seconds())
    except Exception as exc:  # durationpy raises a bare Exception subclass
        raise RouteError(f"{where} must be a duration such as 500ms or 10s, got {text!r}") from exc


def _regex(value: str, where: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise RouteError(f"{where} is not a valid regular expression: {exc}") from None
    return value


# --- Gateway API -----------------------------------------------------------------------------

_GW_PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
_GW_VALUE_TYPES = ("Exact", "RegularExpression")


def _gw_string_match(
    obj: Obj, where: str, default_type: str, allowed: Sequence[str]
) -> StringMatch:
    kind = _get(obj, "type", where, str, default_type)
    if kind not in allowed:
        raise RouteError(f"{where}.type must be one of {', '.join(allowed)}, got {kind!r}")
    value = _get(obj, "value", where, str, "/" if kind == "PathPrefix" else None)
    if value is None:
        raise RouteError(f"{where}.value is required")
    if kind == "RegularExpression":
        _regex(value, f"{where}.value")
    return StringMatch(kind, value)


def _gw_match(obj: Obj, where: str) -> Match:
    path = None
    if obj.get("path") is not None:
        path = _gw_string_match(
            _get(obj, "path", where, dict), f"{where}.path", "PathPrefix", _GW_PATH_TYPES
        )
    headers = []
    for i, h in enumerate(_get(obj, "headers", where, list, [])):
        w = f"{where}.headers[{i}]"
        name = _get(h, "name", w, str)
        if not name:
            raise RouteError(f"{w}.name is required")
        headers.append((name.lower(), _gw_string_match(h, w, "Exact", _GW_VALUE_TYPES)))
    query = []
    for i, q in enumerate(_get(obj, "queryParams", where, list, [])):
        w = f"{where}.queryParams[{i}]"
        name = _get(q, "name", w, str)
        if not name:
            raise RouteError(f"{w}.name is required")
        query.append((name, _gw_string_match(q, w, "Exact", _GW_VALUE_TYPES)))
    method = _get(obj, "method", where, str)
    return Match(
        path=path,
        method=StringMatch("Exact", method.upper()) if method else None,
        headers=tuple(headers),
        query=tuple(query),
    )


def _gw_header_edit(obj: Obj, where: str) -> HeaderEdit:
    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for i, item in enumerate(_get(obj, key, where, list, [])):
            w = f"{where}.{key}[{i}]"
            out.append((_get(item, "name", w, str, ""), _get(item, "value", w, str, "")))
        return tuple(out)

    remove = _get(obj, "remove", where, list, [])
    if not all(isinstance(r, str) for r in remove):
        raise RouteError(f"{where}.remove must be a list of header names")
    return HeaderEdit(set=pairs("set"), add=pairs("add"), remove=tuple(remove))


def mirror_percent_gateway(mirror: Obj, where: str = "requestMirror") -> float:
    """Share of requests (0..100) a Gateway API requestMirror copies: ``percent``, or
    ``fraction`` {numerator, denominator=100}; neither set means every request."""
    percent = _get(mirror, "percent", where, int)
    fraction = _get(mirror, "fraction", where, dict)
    if percent is not None and fraction is not None:
        raise RouteError(f"{where}: set percent or fraction, not both")
    if percent is not None:
        if not 0 <= percent <= 100:
            raise RouteError(f"{where}.percent must be in [0, 100], got {percent}")
        return float(percent)
    if fraction is not None:
        num = _get(fraction, "numerator", f"{where}.fraction", int)
        den = _get(fraction, "denominator", f"{where}.fraction", int, 100)
        if num is None:
            raise RouteError(f"{where}.fraction.numerator is required")
        if den < 1:
            raise RouteError(f"{where}.fraction.denominator must be >= 1, got {den}")
        if not 0 <= num <= den:
            raise RouteError(
                f"{where}.fraction.numerator must be in [0, denominator={den}], got {num}"
            )
        return 100.0 * float(num) / float(den)
    return 100.0


def _gw_backend_ref(
    obj: Obj, where: str, namespace: str
) -> tuple[str, str, int | None, str | None]:
    name = _get(obj, "name", where, str)
    if not name:
        raise RouteError(f"{where}.name is required")
    ns = _get(obj, "namespace", where, str, namespace) or namespace
    port = _get(obj, "port", where, int)
    group = _get(obj, "group", where, str, "")
    kind = _get(obj, "kind", where, str, "Service")
    invalid = None
    if group not in ("", "core") or kind != "Service":
        invalid = f"{where} refers to {kind}.{group or 'core'}; only core Services are served"
    return name, ns, port, invalid


def _gw_filters(
    filters: Sequence[Obj], where: str, namespace: str
) -> tuple[HeaderEdit, list[Mirror]]:
    edit = HeaderEdit()
    mirrors: list[Mirror] = []
    for i, f in enumerate(filters):
        w = f"{where}[{i}]"
        ftype = _get(f, "type", w, str)
        if ftype == "RequestMirror":
            rm = _get(f, "requestMirror", w, dict)
            if rm is None:
                raise RouteError(f"{w}.requestMirror is required for type RequestMirror")
            ref = _get(rm, "backendRef", f"{w}.requestMirror", dict)
            if ref is None:
                raise RouteError(f"{w}.requestMirror.backendRef is required")
            name, ns, port, invalid = _gw_backend_ref(
                ref, f"{w}.requestMirror.backendRef", namespace
            )
            if invalid:
                raise RouteError(invalid)
            pct = mirror_percent_gateway(rm, f"{w}.requestMirror")
            mirrors.append(Mirror(service=name, namespace=ns, percent=pct, port=port))
        elif ftype == "RequestHeaderModifier":
            rhm = _get(f, "requestHeaderModifier", w, dict, {})
            edit = _gw_header_edit(rhm, f"{w}.requestHeaderModifier")
        elif ftype is None:
            raise RouteError(f"{w}.type is required")
        # Other filter types (redirects, rewrites, response headers) do not change which
        # backend is chosen; the lab gateway ignores them.
    return edit, mirrors


def parse_httproute(obj: Obj) -> RouteTable:
    """Route table of a gateway.networking.k8s.io HTTPRoute (v1 or v1beta1) object."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    name = meta.get("name") or ""
    where0 = f"HTTPRoute {namespace}/{name}: spec"
    spec = _get(obj, "spec", "HTTPRoute", dict, {})
    rules_raw = _get(spec, "rules", where0, list, [{}])
    rules = []
    for ri, rule in enumerate(rules_raw):
        w = f"{where0}.rules[{ri}]"
        if not isinstance(rule, Mapping):
            raise RouteError(f"{w} must be an object")
        matches = tuple(
            _gw_match(m, f"{w}.matches[{mi}]")
            for mi, m in enumerate(_get(rule, "matches", w, list, []))
        )
        edit, mirrors = _gw_filters(_get(rule, "filters", w, list, []), f"{w}.filters", namespace)
        backends = []
        for bi, ref in enumerate(_get(rule, "backendRefs", w, list, [])):
            bw = f"{w}.backendRefs[{bi}]"
            bname, bns, port, invalid = _gw_backend_ref(ref, bw, namespace)
            weight = _get(ref, "weight", bw, int, 1)
            if weight < 0:
                raise RouteError(f"{bw}.weight must be >= 0, got {weight}")
            bedit, bmirrors = _gw_filters(
                _get(ref, "filters", bw, list, []), f"{bw}.filters", namespace
            )
            if bmirrors:
                raise RouteError(f"{bw}.filters: RequestMirror is only supported on the rule")
            backends.append(Backend(bname, bns, weight, port, bedit, invalid))
        timeouts = _get(rule, "timeouts", w, dict, {})
        request_timeout = _get(timeouts, "request", f"{w}.timeouts", str)
        rules.append(
            Rule(
                index=ri,
                name=_get(rule, "name", w, str, ""),
                matches=matches,
                backends=tuple(backends),
                mirrors=tuple(mirrors),
                headers=edit,
                timeout_s=_duration_s(request_timeout, f"{w}.timeouts.request")
                if request_timeout
                else None,
            )
        )
    return RouteTable(
        kind=RouteKind.HTTPROUTE,
        namespace=namespace,
        name=name,
        rules=tuple(rules),
        generation=int(meta.get("generation") or 0),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


# --- Istio -----------------------------------------------------------------------------------


def parse_istio_host(host: str, namespace: str, where: str) -> tuple[str, str]:
    """Service and namespace of an Istio destination host: ``svc``, ``svc.ns``, ``svc.ns.svc``
    or ``svc.ns.svc.cluster.local``. Other names (external hosts) are refused."""
    parts = host.split(".")
    if not host or any(not p for p in parts):
        raise RouteError(f"{where} must be a service host name, got {host!r}")
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 or parts[2:] in (["svc"], ["svc", "cluster", "local"]):
        return parts[0], parts[1]
    raise RouteError(
        f"{where}: {host!r} is not a cluster service (svc, svc.ns or svc.ns.svc.cluster.local)"
    )


def _istio_string_match(obj: Any, where: str) -> StringMatch:
    if not isinstance(obj, Mapping):
        raise RouteError(f"{where} must be an object with exact, prefix or regex")
    keys = [k for k in ("exact", "prefix", "regex") if obj.get(k) is not None]
    if len(keys) != 1:
        raise RouteError(f"{where} must set exactly one of exact, prefix, regex")
    key = keys[0]
    value = _get(obj, key, where, str)
    if key == "regex":
        return StringMatch("RegularExpression", _regex(value, f"{where}.regex"))
    return StringMatch("Exact" if key == "exact" else "Prefix", value)


def _istio_match(obj: Obj, where: str) -> Match:
    def named(key: str) -> tuple[tuple[str, StringMatch], ...]:
        table = _get(obj, key, where, dict, {})
        return tuple(
            (k.lower() if key != "queryParams" else k, _istio_string_match(v, f"{where}.{key}.{k}"))
            for k, v in table.items()
        )

    uri = obj.get("uri")
    method = obj.get("method")
    return Match(
        path=_istio_string_match(uri, f"{where}.uri") if uri is not None else None,
        method=_istio_string_match(method, f"{where}.method") if method is not None else None,
        headers=named("headers"),
        without_headers=named("withoutHeaders"),
        query=named("queryParams"),
    )


def _istio_headers(obj: Obj, where: str) -> HeaderEdit:
    request = _get(_get(obj, "headers", where, dict, {}), "request", f"{where}.headers", dict, {})
    w = f"{where}.headers.request"
    set_ = _get(request, "set", w, dict, {})
    add = _get(request, "add", w, dict, {})
    remove = _get(request, "remove", w, list, [])
    return HeaderEdit(
        set=tuple((str(k), str(v)) for k, v in set_.items()),
        add=tuple((str(k), str(v)) for k, v in add.items()),
        remove=tuple(str(r) for r in remove),
    )


def _istio_destination(obj: Any, where: str, namespace: str) -> tuple[str, str, int | None]:
    if not isinstance(obj, Mapping):
        raise RouteError(f"{where} must be an object with a host")
    host = _get(obj, "host", where, str)
    if not host:
        raise RouteError(f"{where}.host is required")
    service, ns = parse_istio_host(host, namespace, f"{where}.host")
    port = _get(_get(obj, "port", where, dict, {}), "number", f"{where}.port", int)
    return service, ns, port


def _istio_percent(obj: Any, where: str) -> float:
    if obj is None:
        return 100.0
    value = _get(obj, "value", where, (int, float), 100.0) if isinstance(obj, Mapping) else None
    if value is None:
        raise RouteError(f"{where} must be an object {{value: 0..100}}")
    if not 0.0 <= float(value) <= 100.0:
        raise RouteError(f"{where}.value must be in [0, 100], got {value}")
    return float(value)


def mirror_percent_istio(http: Obj, where: str = "http[0]") -> float:
    """Share of requests (0..100) an Istio http route mirrors: ``mirrorPercentage.value``, else
    the deprecated integer ``mirrorPercent``, else 100."""
    if http.get("mirrorPercentage") is not None:
        return _istio_percent(http["mirrorPercentage"], f"{where}.mirrorPercentage")
    legacy = _get(http, "mirrorPercent", where, int)
    if legacy is not None:
        if not 0 <= legacy <= 100:
            raise RouteError(f"{where}.mirrorPercent must be in [0, 100], got {legacy}")
        return float(legacy)
    return 100.0


def parse_virtualservice(obj: Obj) -> RouteTable:
    """Route table of a networking.istio.io VirtualService object."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    name = meta.get("name") or ""
    where0 = f"VirtualService {namespace}/{name}: spec"
    spec = _get(obj, "spec", "VirtualService", dict, {})
    rules = []
    for hi, http in enumerate(_get(spec, "http", where0, list, [])):
        w = f"{where0}.http[{hi}]"
        if not isinstance(http, Mapping):
            raise RouteError(f"{w} must be an object")
        matches = tuple(
            _istio_match(m, f"{w}.match[{mi}]")
            for mi, m in enumerate(_get(http, "match", w, list, []))
        )
        routes = _get(http, "route", w, list, [])
        backends = []
        for di, dest in enumerate(routes):
            dw = f"{w}.route[{di}]"
            service, ns, port = _istio_destination(
                dest.get("destination"), f"{dw}.destination", namespace
            )
            weight = _get(dest, "weight", dw, int)
            if weight is not None and weight < 0:
                raise RouteError(f"{dw}.weight must be >= 0, got {weight}")
            if len(routes) == 1:
                weight = 1  # a single destination receives all traffic
            backends.append(Backend(service, ns, weight or 0, port, _istio_headers(dest, dw)))
        mirrors = []
        if http.get("mirror") is not None:
            service, ns, port = _istio_destination(http["mirror"], f"{w}.mirror", namespace)
            mirrors.append(Mirror(service, ns, mirror_percent_istio(http, w), port))
        for mi, m in enumerate(_get(http, "mirrors", w, list, [])):
            mw = f"{w}.mirrors[{mi}]"
            service, ns, port = _istio_destination(
                m.get("destination"), f"{mw}.destination", namespace
            )
            mirrors.append(
                Mirror(service, ns, _istio_percent(m.get("percentage"), f"{mw}.percentage"), port)
            )
        timeout = _get(http, "timeout", w, str)
        rules.append(
            Rule(
                index=hi,
                name=_get(http, "name", w, str, ""),
                matches=matches,
                backends=tuple(backends),
                mirrors=tuple(mirrors),
                headers=_istio_headers(http, w),
                timeout_s=_duration_s(timeout, f"{w}.timeout") if timeout else None,
            )
        )
    return RouteTable(
        kind=RouteKind.VIRTUALSERVICE,
        namespace=namespace,
        name=name,
        rules=tuple(rules),
        generation=int(meta.get("generation") or 0),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def parse_route(kind: RouteKind, obj: Obj) -> RouteTable:
    if kind is RouteKind.HTTPROUTE:
        return parse_httproute(obj)
    return parse_virtualservice(obj)
