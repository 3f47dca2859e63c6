"""The auditors' console, `lineage-guard serve`: server-rendered pages and the same data as JSON
under `/api/v1`, over the same query layer as `lineage trace | leaks | verify`
(`lineage.queries`) and the store's aggregate queries.

Every route declares what it needs with `access.require` (viewer: aggregates only; auditor:
record-level reads; operator: verification; admin: the access log and the accounts); a
tenant-bound principal sees only its tenants' records and aggregates; every read of
record-level data is appended to the store's access log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from lineage_guard.lineage import queries
from lineage_guard.lineage.accounts import AccessRecord
from lineage_guard.lineage.checkpoints import key_id
from lineage_guard.lineage.errors import LineageGuardError, UnusableInputError
from lineage_guard.lineage.events import Stage, StoredEvent, format_time, parse_time
from lineage_guard.lineage.hops import StoredHop
from lineage_guard.lineage.store import LineageStore
from lineage_guard.web.access import Permission, allows, public, require, sees_tenant, signed_in
from lineage_guard.web.app import create_app
from lineage_guard.web.auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    Authenticator,
    AuthSettings,
    Principal,
    client_address,
    utcnow,
)

HERE = Path(__file__).parent
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_SEQ = 2**63 - 1  # a batch position the stores can hold (a 64-bit integer)

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html", "svg"], default=True),
)
_templates.filters["time"] = lambda at: format_time(at) if at is not None else "never"


LEAK_CHECK_AGE = timedelta(minutes=5)  # the least time between two leak counts it starts itself


@dataclass
class ConsoleState:
    """What the console keeps between requests: the public key it verifies checkpoints with,
    the last verification, the overview's counts per (tenants, store state), and the leak
    count running in the background, if any (`start_leak_check`)."""

    public_key: Any = None
    last_verification: dict[str, Any] | None = None
    leak_check_age: timedelta = LEAK_CHECK_AGE
    leak_check_error: str | None = None
    _leak_check: threading.Thread | None = None
    _cache: dict[Any, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def leak_check_running(self) -> bool:
        return self._leak_check is not None and self._leak_check.is_alive()

    def start_leak_check(self, store: LineageStore) -> bool:
        """Counts the leaks in the background and keeps the count in the store
        (`record_leak_check`), unless a count is running already; True if it started one."""
        with self._lock:
            if self.leak_check_running():
                return False
            self._leak_check = threading.Thread(
                target=self._count_leaks, args=(store,), name="leak-check", daemon=True
            )
            self._leak_check.start()
        return True

    def wait_for_leak_check(self, timeout: float | None = None) -> None:
        if (running := self._leak_check) is not None:
            running.join(timeout)

    def _count_leaks(self, store: LineageStore) -> None:
        at, started = utcnow(), time.perf_counter()
        try:
            up_to_entry = store.mark()[0]  # the count covers at least the entries up to it
            report = queries.leaks(store, blocked=False)
            store.record_leak_check(
                at=at,
                up_to_entry=up_to_entry,
                seconds=time.perf_counter() - started,
                leaks=Counter(_tenant(leak.stored) for leak in report.leaks),
            )
            self.leak_check_error = None
        except LineageGuardError as exc:
            self.leak_check_error = str(exc)


# -- reading (blocking: run in the thread pool) ---------------------------------------------------


def overview(store: LineageStore, state: ConsoleState, principal: Principal) -> dict[str, Any]:
    """Counts by stage, outcome, rule, content class, tenant and hour (from the store's
    summary, read again only when the store changed); the last leak count kept, with its time
    (a fresh one started in the background when it is stale); the last verification and
    signed checkpoint."""
    tenants = principal.tenants
    mark = store.mark()
    key = (tenants, mark)
    with state._lock:
        cached = state._cache.get(key)
    result = cached if cached is not None else _counts(store, state, tenants, key)
    return {
        **result,
        **_leak_count(store, state, tenants, mark[0]),
        "last_verification": state.last_verification,
    }


def _leak_count(
    store: LineageStore, state: ConsoleState, tenants: frozenset[str] | None, newest: int
) -> dict[str, Any]:
    """The last leak count kept, and whether a fresh one runs: one starts when there is none,
    or when entries were written since and the last one is `state.leak_check_age` old."""
    check = store.leak_check(tenants=tenants)
    if check is None or (
        newest > check.up_to_entry and utcnow() - check.at >= state.leak_check_age
    ):
        state.start_leak_check(store)
    return {
        "leaks": check.leaks if check is not None else None,
        "leak_check": None
        if check is None
        else {
            "at": format_time(check.at),
            "seconds": round(check.seconds, 3),
            "up_to_entry": check.up_to_entry,
            "written_since": newest > check.up_to_entry,
        },
        "leak_check_running": state.leak_check_running(),
        "leak_check_error": state.leak_check_error,
    }


def _counts(
    store: LineageStore, state: ConsoleState, tenants: frozenset[str] | None, key: Any
) -> dict[str, Any]:
    counts = store.hop_counts(tenants=tenants)
    by: dict[str, Counter[str]] = {
        name: Counter() for name in ("outcome", "pipeline", "stopped_at", "content_class", "tenant")
    }
    timeline: Counter[tuple[str, str]] = Counter()
    for c in counts:
        by["outcome"][c.outcome] += c.count
        by["pipeline"][c.pipeline] += c.count
        by["stopped_at"][c.stopped_at or "(passed)"] += c.count
        by["content_class"][c.content_class or "(unknown)"] += c.count
        by["tenant"][c.tenant_id or "(unknown)"] += c.count
        timeline[(format_time(c.hour), c.outcome)] += c.count
    checkpoints = store.checkpoints()
    result = {
        "hops": sum(c.count for c in counts),
        "by_outcome": dict(by["outcome"].most_common()),
        "by_stage": dict(by["pipeline"].most_common()),
        "by_stopped_at": dict(by["stopped_at"].most_common()),
        "by_rule": dict(Counter(store.rule_counts(tenants=tenants)).most_common()),
        "by_content_class": dict(by["content_class"].most_common()),
        "by_tenant": dict(by["tenant"].most_common()),
        "timeline": [
            {"hour": hour, "outcome": outcome, "hops": n}
            for (hour, outcome), n in sorted(timeline.items())
        ],
        "last_checkpoint": format_time(checkpoints[-1].at) if checkpoints else None,
    }
    with state._lock:
        state._cache = {key: result}  # one store state at a time: the newest
    return result


def _tenant(stored: StoredEvent) -> str | None:
    return stored.event.tenant_id


def trace(store: LineageStore, principal: Principal, record_id: str, checkpoint: int | None):
    """The record's trace as `principal` may see it (its tenants' events only), as of a
    signed checkpoint when asked; 404 when nothing of it is visible."""
    if not record_id.strip():
        raise UnusableInputError("Give a record id.")
    found = queries.trace(store, record_id)
    events = [t for t in found.events if sees_tenant(principal, _tenant(t.stored))]
    as_of = None
    if checkpoint is not None:
        checkpoints = store.checkpoints()
        if not 0 <= checkpoint < len(checkpoints):
            raise HTTPException(404, f"No signed checkpoint `{checkpoint}`.")
        as_of = checkpoints[checkpoint]
        heads = {head.chain_id: head.seq for head in as_of.heads}
        events = [
            t
            for t in events
            if t.stored.chain_id in heads and t.stored.seq <= heads[t.stored.chain_id]
        ]
    if not any(t.depth == 0 for t in events):
        raise HTTPException(404, f"No record `{record_id}` in the lineage store.")
    chains = {(t.stored.chain_id, t.stored.seq) for t in events}
    return {
        "record_id": record_id,
        "as_of_checkpoint": as_of.to_dict() if as_of is not None else None,
        "intact": all(t.chain.broken is None for t in events),
        "events": [t.to_dict() for t in events],
        "chains": [c.to_dict() for c in found.chains if (c.chain_id, c.seq) in chains],
        "missing_ancestors": list(found.missing_ancestors),
    }


def leaks(
    store: LineageStore, principal: Principal, page: int = 1, per_page: int = PAGE_SIZE
) -> dict[str, Any]:
    """The leaks and unacknowledged sends the principal may see, all of them, and one page of
    the blocked attempts (a large store holds hundreds of thousands), with their total."""
    report = queries.leaks(store)

    def seen(items: Iterable[Any]) -> list[Any]:
        return [i for i in items if sees_tenant(principal, _tenant(getattr(i, "stored", i)))]

    blocked = seen(report.blocked)
    start = (page - 1) * per_page
    return {
        "leaks": [item.to_dict() for item in seen(report.leaks)],
        "unconfirmed": [item.to_dict() for item in seen(report.unconfirmed)],
        "blocked": [item.to_dict() for item in blocked[start : start + per_page]],
        "blocked_total": len(blocked),
        "page": page,
        "per_page": per_page,
    }


def quarantine_row(hop: StoredHop) -> dict[str, Any]:
    h = hop.hop
    return {
        "at": format_time(hop.at),
        "record_id": h.record_id,
        "pipeline": hop.pipeline,
        "run_id": hop.run_id,
        "outcome": str(h.outcome),
        "stopped_at": str(h.stopped_at) if h.stopped_at else None,
        "tenant_id": h.tenant_id,
        "content_class": h.content_class,
        "origin_env": h.origin_env,
        "reasons": [r.to_dict() for r in h.reasons],
        "destination": hop.destination,
        "chain_id": hop.chain_id,
        "seq": hop.seq,
        "index": hop.index,
    }


def verify(store: LineageStore, state: ConsoleState, chain_id: str | None, seq: int | None):
    key = state.public_key
    if seq is not None:
        if chain_id is None:
            raise UnusableInputError("Give `chain_id` with `seq`.")
        broken = store.verify_batches(chain_id, [seq]).get(seq)
        result: dict[str, Any] = {
            "scope": f"chain {chain_id} batch {seq}",
            "ok": broken is None,
            "broken": broken.to_dict() if broken else None,
        }
    else:
        verification = store.verify(chain_id, public_key=key)
        result = {
            "scope": f"chain {chain_id}" if chain_id else "every chain",
            "ok": verification.ok,
            "chains": verification.chains,
            "batches": verification.batches,
            "hops": verification.hops,
            "signed_checkpoints": verification.signed_checkpoints if key is not None else None,
            "broken": verification.broken.to_dict() if verification.broken else None,
        }
    result["key_id"] = key_id(key) if key is not None else None
    result["at"] = format_time(utcnow())
    state.last_verification = result
    return result


def audit(store: LineageStore, principal: Principal, query: str, records: int) -> None:
    """Appends one read of record-level data to the store's access log."""
    store.log_access(
        AccessRecord(
            at=utcnow(), principal=principal.name, via=principal.via, query=query, records=records
        )
    )


def _records(rows: Iterable[dict[str, Any]]) -> int:
    return len({row.get("record_id") for row in rows})


# -- the routes -----------------------------------------------------------------------------------

api = APIRouter(prefix="/api/v1", tags=["api"])
pages = APIRouter(tags=["pages"], default_response_class=HTMLResponse)

Viewer = Annotated[Principal, require(Permission.AGGREGATES_READ)]
Auditor = Annotated[Principal, require(Permission.RECORDS_READ)]
Operator = Annotated[Principal, require(Permission.VERIFY_RUN)]
AccessReader = Annotated[Principal, require(Permission.ACCESS_LOG_READ)]
Admin = Annotated[Principal, require(Permission.ACCOUNTS_MANAGE)]
Anyone = Annotated[Principal, signed_in()]
Public = Annotated[None, public()]


def _store(request: Request) -> LineageStore:
    return request.app.state.store


def _state(request: Request) -> ConsoleState:
    return request.app.state.console


@api.get("/overview", summary="Counts by stage, outcome, rule, content class, tenant; leaks")
async def api_overview(request: Request, principal: Viewer) -> dict[str, Any]:
    return await run_in_threadpool(overview, _store(request), _state(request), principal)


@api.get("/runs", summary="Each run: pipeline, run id, counts, chains, checkpoint status")
async def api_runs(request: Request, principal: Viewer) -> list[dict[str, Any]]:
    return await run_in_threadpool(_runs, _store(request), principal)


def _runs(store: LineageStore, principal: Principal) -> list[dict[str, Any]]:
    signed = {c.run_id for c in store.checkpoints()}
    return [
        {
            "pipeline": r.pipeline,
            "run_id": r.run_id,
            "first": format_time(r.first),
            "last": format_time(r.last),
            "chains": r.chains,
            "batches": r.batches,
            "hops": r.hops,
            "delivered": r.delivered,
            "quarantined": r.quarantined,
            "blocked": r.blocked,
            "signed_checkpoint": r.run_id in signed,
        }
        for r in store.runs(tenants=principal.tenants)
    ]


CheckpointQuery = Annotated[
    int | None, Query(ge=0, description="As of the signed checkpoint with this position")
]


@api.get(
    "/records/{record_id}/trace",
    summary="A record's hops across stages, with its ancestors",
    responses={404: {"description": "Unknown record (or not visible to this principal)"}},
)
async def api_trace(
    request: Request, record_id: str, principal: Auditor, checkpoint: CheckpointQuery = None
) -> dict[str, Any]:
    return await run_in_threadpool(_audited_trace, request, principal, record_id, checkpoint)


def _audited_trace(
    request: Request, principal: Principal, record_id: str, checkpoint: int | None
) -> dict[str, Any]:
    store = _store(request)
    try:
        found = trace(store, principal, record_id, checkpoint)
    except HTTPException:
        audit(store, principal, f"trace record_id={record_id}", 0)
        raise
    audit(store, principal, f"trace record_id={record_id}", _records(found["events"]))
    return found


Page = Annotated[int, Query(ge=1, le=1_000_000)]
PerPage = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]


@api.get("/leaks", summary="Leaks, unacknowledged sends, and one page of blocked attempts")
async def api_leaks(
    request: Request, principal: Auditor, page: Page = 1, per_page: PerPage = PAGE_SIZE
) -> dict[str, Any]:
    return await run_in_threadpool(_audited_leaks, request, principal, page, per_page)


def _audited_leaks(
    request: Request, principal: Principal, page: int = 1, per_page: int = PAGE_SIZE
) -> dict[str, Any]:
    found = leaks(_store(request), principal, page, per_page)
    shown = found["leaks"] + found["unconfirmed"] + found["blocked"]
    audit(_store(request), principal, f"leaks page={page} per_page={per_page}", _records(shown))
    return found


@dataclass(frozen=True, kw_only=True)
class QuarantineFilter:
    rule: str | None
    tenant: str | None
    stage: str | None
    since: datetime | None
    until: datetime | None
    page: int
    per_page: int

    def query(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("rule", self.rule),
                ("tenant", self.tenant),
                ("stage", self.stage),
                ("since", format_time(self.since) if self.since else None),
                ("until", format_time(self.until) if self.until else None),
            )
            if value
        ]
        return "&".join([*parts, f"page={self.page}", f"per_page={self.per_page}"])


def _time_param(name: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except (ValueError, TypeError):
        raise UnusableInputError(
            f"Bad `{name}` `{text}`: use an ISO-8601 time such as `2026-11-27T12:00:00Z`."
        ) from None


_DATE_TIME: dict[str, Any] = {"format": "date-time", "description": "ISO-8601 (RFC 3339)"}


def quarantine_filter(
    rule: Annotated[str | None, Query(max_length=200)] = None,
    tenant: Annotated[str | None, Query(max_length=200)] = None,
    stage: Annotated[Stage | None, Query()] = None,
    since: Annotated[str | None, Query(max_length=64, json_schema_extra=_DATE_TIME)] = None,
    until: Annotated[str | None, Query(max_length=64, json_schema_extra=_DATE_TIME)] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> QuarantineFilter:
    return QuarantineFilter(
        rule=rule or None,
        tenant=tenant or None,
        stage=str(stage) if stage else None,
        since=_time_param("since", since),
        until=_time_param("until", until),
        page=page,
        per_page=per_page,
    )


def _audited_quarantine(
    request: Request, principal: Principal, f: QuarantineFilter
) -> list[dict[str, Any]]:
    store = _store(request)
    if f.tenant is not None and not sees_tenant(principal, f.tenant):
        rows: list[dict[str, Any]] = []
    else:
        hops = store.quarantined(
            tenants=principal.tenants,
            tenant=f.tenant,
            rule=f.rule,
            stage=f.stage,
            since=f.since,
            until=f.until,
            limit=f.per_page,
            offset=(f.page - 1) * f.per_page,
        )
        rows = [quarantine_row(h) for h in hops]
    audit(store, principal, f"quarantine {f.query()}", _records(rows))
    return rows


Filter = Annotated[QuarantineFilter, Depends(quarantine_filter)]


@api.get("/quarantine", summary="Quarantined and blocked records, filtered, one page")
async def api_quarantine(request: Request, principal: Auditor, f: Filter) -> list[dict[str, Any]]:
    return await run_in_threadpool(_audited_quarantine, request, principal, f)


@api.post("/verify", summary="Verify every chain, one chain, or one batch (operators)")
async def api_verify(
    request: Request,
    principal: Operator,
    chain_id: Annotated[str | None, Query(max_length=500)] = None,
    seq: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
) -> dict[str, Any]:
    return await run_in_threadpool(verify, _store(request), _state(request), chain_id, seq)


@api.post("/leak-check", summary="Count the leaks again, in the background (operators)")
async def api_leak_check(request: Request, principal: Operator) -> dict[str, Any]:
    started = _state(request).start_leak_check(_store(request))
    return {"started": started, "running": True}


@api.get("/access-log", summary="Reads of record-level data (admins)")
async def api_access_log(
    request: Request,
    principal: AccessReader,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> list[dict[str, Any]]:
    return await run_in_threadpool(_access_log, _store(request), page)


def _access_log(store: LineageStore, page: int) -> list[dict[str, Any]]:
    return [
        {
            "at": format_time(a.at),
            "principal": a.principal,
            "via": a.via,
            "query": a.query,
            "records": a.records,
        }
        for a in store.access_log(limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    ]


@api.get("/users", summary="Local users and API keys (admins; never a secret)")
async def api_users(request: Request, principal: Admin) -> dict[str, Any]:
    store = _store(request)
    users, keys = await run_in_threadpool(lambda: (store.users(), store.api_keys()))
    return {
        "users": [{"name": u.name, "role": u.role, "tenants": _sorted(u.tenants)} for u in users],
        "api_keys": [
            {
                "key_id": k.key_id,
                "name": k.name,
                "scopes": sorted(k.scopes),
                "tenants": _sorted(k.tenants),
                "revoked": k.revoked_at is not None,
            }
            for k in keys
        ],
    }


def _sorted(tenants: frozenset[str] | None) -> list[str] | None:
    return None if tenants is None else sorted(tenants)


# -- pages ----------------------------------------------------------------------------------------


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)
    session = getattr(request.state, "session", None)
    nav = [
        ("/", "Overview", Permission.AGGREGATES_READ),
        ("/runs", "Runs", Permission.AGGREGATES_READ),
        ("/trace", "Trace", Permission.RECORDS_READ),
        ("/leaks", "Leaks", Permission.RECORDS_READ),
        ("/quarantine", "Quarantine", Permission.RECORDS_READ),
        ("/verify", "Verify", Permission.VERIFY_RUN),
        ("/access-log", "Access log", Permission.ACCESS_LOG_READ),
    ]
    html = _templates.get_template(template).render(
        request_path=request.url.path,
        principal=principal,
        nav=[(href, label) for href, label, p in nav if principal and allows(principal, p)],
        csrf=session.csrf if session is not None else "",
        csrf_field=CSRF_FIELD,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, status: int, detail: str) -> Response:
    return render(request, "error.html", status=status, status_code=status, detail=detail)


def bars(counts: dict[str, int], width: int = 360) -> list[dict[str, Any]]:
    """Bars of a horizontal SVG chart: label, count and length in pixels."""
    top = max(counts.values(), default=0) or 1
    return [
        {"label": label, "count": n, "length": max(1, round(width * n / top)), "y": i * 22}
        for i, (label, n) in enumerate(counts.items())
    ]


def timeline_chart(rows: list[dict[str, Any]], width: int = 600, height: int = 120) -> dict:
    """Stacked columns per hour (delivered, quarantined, blocked) for an SVG chart."""
    hours = sorted({r["hour"] for r in rows})
    per: dict[str, Counter[str]] = {h: Counter() for h in hours}
    for r in rows:
        per[r["hour"]][r["outcome"]] += r["hops"]
    top = max((sum(c.values()) for c in per.values()), default=0) or 1
    step = width / max(len(hours), 1)
    columns = []
    for i, hour in enumerate(hours):
        y = float(height)
        parts = []
        for outcome in ("delivered", "quarantined", "blocked"):
            h = height * per[hour][outcome] / top
            y -= h
            parts.append({"outcome": outcome, "y": round(y, 1), "height": round(h, 1)})
        columns.append({"hour": hour, "x": round(i * step, 1), "parts": parts})
    return {
        "columns": columns,
        "bar": max(1.0, round(step * 0.8, 1)),
        "width": width,
        "height": height,
    }


@pages.get("/", summary="Overview page")
async def page_overview(request: Request, principal: Viewer) -> HTMLResponse:
    data = await run_in_threadpool(overview, _store(request), _state(request), principal)
    charts = {
        name: bars(data[key])
        for name, key in (
            ("Outcome", "by_outcome"),
            ("Stage (pipeline)", "by_stage"),
            ("Stopped at", "by_stopped_at"),
            ("Rule", "by_rule"),
            ("Content class", "by_content_class"),
            ("Tenant", "by_tenant"),
        )
    }
    return render(
        request,
        "overview.html",
        data=data,
        can_count=allows(principal, Permission.VERIFY_RUN),
        charts=charts,
        timeline=timeline_chart(data["timeline"]),
    )


@pages.get("/runs", summary="Runs page")
async def page_runs(request: Request, principal: Viewer) -> HTMLResponse:
    runs = await run_in_threadpool(_runs, _store(request), principal)
    return render(request, "runs.html", runs=runs)


@pages.get(
    "/trace",
    summary="Trace page: search by record id",
    responses={404: {"description": "Unknown record (or not visible to this principal)"}},
)
async def page_trace(
    request: Request,
    principal: Auditor,
    record_id: Annotated[str | None, Query(max_length=1000)] = None,
    checkpoint: CheckpointQuery = None,
) -> HTMLResponse:
    checkpoints = await run_in_threadpool(_store(request).checkpoints)
    found = None
    if record_id:
        found = await run_in_threadpool(_audited_trace, request, principal, record_id, checkpoint)
    return render(
        request,
        "trace.html",
        record_id=record_id or "",
        found=found,
        checkpoints=[(i, format_time(c.at), c.key_id[:16]) for i, c in enumerate(checkpoints)],
        checkpoint=checkpoint,
    )


@pages.get("/leaks", summary="Leaks page")
async def page_leaks(
    request: Request, principal: Auditor, page: Page = 1, per_page: PerPage = PAGE_SIZE
) -> HTMLResponse:
    found = await run_in_threadpool(_audited_leaks, request, principal, page, per_page)
    return render(request, "leaks.html", found=found)


@pages.get("/quarantine", summary="Quarantine browser")
async def page_quarantine(request: Request, principal: Auditor, f: Filter) -> HTMLResponse:
    rows = await run_in_threadpool(_audited_quarantine, request, principal, f)
    return render(request, "quarantine.html", rows=rows, f=f, stages=[str(s) for s in Stage])


@pages.get("/verify", summary="Verification page")
async def page_verify(request: Request, principal: Operator) -> HTMLResponse:
    return render(request, "verify.html", result=_state(request).last_verification)


@pages.post("/verify", summary="Run a verification (form)")
async def page_verify_run(
    request: Request,
    principal: Operator,
    chain_id: Annotated[str | None, Form(max_length=500)] = None,
) -> HTMLResponse:
    result = await run_in_threadpool(
        verify, _store(request), _state(request), chain_id or None, None
    )
    return render(request, "verify.html", result=result)


@pages.get("/access-log", summary="Access log page (admins)")
async def page_access_log(
    request: Request,
    principal: AccessReader,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    rows = await run_in_threadpool(_access_log, _store(request), page)
    return render(request, "access_log.html", rows=rows, page=page)


@pages.get("/signin", summary="Sign-in page (anonymous)")
async def page_signin(
    request: Request, _: Public, next: Annotated[str, Query(max_length=500)] = "/"
) -> HTMLResponse:
    return render(request, "signin.html", next=_safe_next(next), message="")


_HTML: dict[str, Any] = {"text/html": {"schema": {"type": "string"}}}
_SEE_OTHER: dict[int | str, dict[str, Any]] = {
    303: {"description": "Done: go to the page in `Location`"}
}


@pages.post(
    "/signin",
    summary="Sign in (anonymous; rate-limited)",
    responses={
        **_SEE_OTHER,
        401: {"description": "The form again: wrong name or password", "content": _HTML},
    },
)
async def signin(
    request: Request,
    _: Public,
    name: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    auth: Authenticator = request.app.state.authenticator
    try:
        session = await run_in_threadpool(
            auth.sign_in, name, password, client=client_address(request)
        )
    except HTTPException as exc:
        if exc.status_code != 401:
            raise
        return render(
            request, "signin.html", status=401, next=_safe_next(next), message=str(exc.detail)
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int(auth.settings.session_ttl_s),
        secure=auth.settings.secure_cookies,
        httponly=True,
        samesite="strict",
        path="/",
    )
    return response


@pages.post("/signout", summary="Sign out", responses=_SEE_OTHER)
async def signout(request: Request, _: Anyone) -> Response:
    auth: Authenticator = request.app.state.authenticator
    session = getattr(request.state, "session", None)
    if session is not None:
        auth.sessions.close(session.token)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@pages.post(
    "/leak-check", summary="Count the leaks again, in the background (form)", responses=_SEE_OTHER
)
async def page_leak_check(request: Request, principal: Operator) -> RedirectResponse:
    _state(request).start_leak_check(_store(request))
    return RedirectResponse("/", status_code=303)


def _safe_next(target: str) -> str:
    """Only a path on this server (never `//host` or a scheme): no open redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return quote(target, safe="/?=&-_.~%")


# -- the app --------------------------------------------------------------------------------------


def create_console(
    store: LineageStore, *, auth: AuthSettings | None = None, public_key: Any = None
) -> FastAPI:
    """The console's app over `store` (which it does not close)."""
    app = create_app(
        title="lineage-guard console",
        description="The auditors' governance console: lineage evidence per record.",
        store=store,
        auth=auth or AuthSettings(),
        routers=[api, pages],
        ready=store.mark,
        error_page=error_page,
        signin_path="/signin",
    )
    app.state.console = ConsoleState(public_key=public_key)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
