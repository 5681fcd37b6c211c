"""The console's pages: server-rendered HTML (Jinja2) over the Engine, under /console.

Signed-in operators only (garrison.detect.console.sessions): a page without a live session
redirects to the sign-in form, a JSON endpoint answers 401. Every POST checks the session's CSRF
token and answers with a redirect (post/redirect/get), its outcome shown once on the next page.
Writes go through the same Engine facade as the API and the CLI (verification, profiles, groups,
audit), so the console cannot do what the API would refuse. The pages refresh themselves: the
script polls /console/api/changes and re-renders the page's <main> when a report or an event
arrived (static/console.js).
"""

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from garrison.detect.api.auth import token_matches
from garrison.detect.audit import http as audit_http
from garrison.detect.console import queries, series
from garrison.detect.console.sessions import COOKIE, Session, Sessions
from garrison.detect.judge.profiles import ProfileError, load_profile
from garrison.detect.respond.violations import VERIFICATION_STATES
from garrison.detect.state.latest import latest_report
from garrison.detect.state.store import StoreError

log = logging.getLogger("garrison.console")

HERE = Path(__file__).resolve().parent
PREFIX = "/console"
SILENT_AFTER_S = 900  # no report for 15 minutes (three of AWS's 5-minute intervals): silent
CHART_WINDOW_S = 14 * 86400  # what a thing's charts show (the metric history's retention)
MAX_DOCUMENT = 256 * 1024  # a pasted CreateSecurityProfile document

templates = Jinja2Templates(directory=str(HERE / "templates"))
# every page: scripts only from this server, never framed (quarantine buttons), no referrer out
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(request: Request, template: str, context: Dict[str, Any], status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _time(ms: Optional[float]) -> str:
    if ms is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000.0))


def _ago(ms: Optional[float]) -> str:
    if ms is None:
        return "never"
    seconds = max(0, int(time.time() - ms / 1000.0))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


templates.env.filters["time"] = _time
templates.env.filters["ago"] = _ago
templates.env.filters["tojson_compact"] = lambda v: json.dumps(v, separators=(",", ":"), default=str)
templates.env.globals["urlencode"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v not in (None, "")})


class SignIn(Exception):
    """No live session: a page redirects to the sign-in form."""


def _session(request: Request, touch: bool = True) -> Session:
    session = request.app.state.console_sessions.get(request.cookies.get(COOKIE), touch)
    if session is None:
        raise SignIn()
    return session


async def _form(request: Request, session: Session) -> Dict[str, str]:
    """The POSTed form, after the CSRF check (a form field or the X-CSRF-Token header)."""
    form = await request.form()
    presented = form.get("csrf") or request.headers.get("x-csrf-token")
    if not Sessions.csrf_ok(session, presented if isinstance(presented, str) else None):
        raise PermissionError("the form's CSRF token is missing or wrong; reload the page and try again")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _back(request: Request, session: Session, fallback: str, kind: str = "", text: str = "") -> RedirectResponse:
    if text:
        session.flash.append((kind, text))
    return RedirectResponse(fallback, status_code=303)


def _render(request: Request, template: str, session: Session, status_code: int = 200, **context) -> HTMLResponse:
    flash, session.flash = session.flash, []
    engine = request.app.state.engine
    context.update(
        request=request,
        csrf=session.csrf,
        flash=flash,
        prefix=PREFIX,
        page_name=template.split(".")[0],
        dry_run=getattr(engine.config, "dry_run", False),
    )
    return _page(request, template, context, status_code)


def _quarantine_groups(engine) -> list:
    return engine.actions.groups() or ["quarantine"]


def _int(value: Optional[str], default: int = 0) -> int:
    try:
        return max(0, int(value or default))
    except ValueError:
        return default


router = APIRouter(prefix=PREFIX, include_in_schema=False)


# ---- sign-in ------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request):
    return _page(request, "login.html", {"prefix": PREFIX, "error": None})


@router.post("/login")
async def login(request: Request):
    form = await request.form()
    token = form.get("token")
    if not isinstance(token, str) or not token_matches(f"Bearer {token}", request.app.state.token):
        log.warning("console: failed sign-in from %s", request.client.host if request.client else "?")
        return _page(request, "login.html", {"prefix": PREFIX, "error": "That is not the API token."}, 401)
    _, cookie = request.app.state.console_sessions.create()
    response = RedirectResponse(PREFIX + "/fleet", status_code=303)
    response.set_cookie(
        COOKIE, cookie, httponly=True, samesite="strict", path=PREFIX, secure=request.url.scheme == "https"
    )
    log.info("console: signed in from %s", request.client.host if request.client else "?")
    return response


@router.post("/logout")
async def logout(request: Request):
    session = _session(request)
    await _form(request, session)
    request.app.state.console_sessions.end(session)
    response = RedirectResponse(PREFIX + "/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@router.get("/")
def home():
    return RedirectResponse(PREFIX + "/fleet", status_code=303)


# ---- fleet --------------------------------------------------------------------------------------


@router.get("/fleet")
def fleet(request: Request, q: str = "", group: str = "", state: str = "", page: str = "0"):
    session = _session(request)
    engine = request.app.state.engine
    now_ms = engine.clock.now_ms()
    quarantine = _quarantine_groups(engine)
    state = state if state in queries.STATES else ""
    page_no = _int(page)
    things, matching = queries.fleet_page(
        engine.store, now_ms, SILENT_AFTER_S, quarantine, q.strip(), group, state, page_no
    )
    pages = max(1, -(-matching // queries.PAGE_SIZE))
    try:
        ml = engine.ml_training_summaries()["summaries"]
    except Exception as exc:  # the page still shows the fleet if the ML hook fails
        log.warning("console: ML status unavailable: %s", exc)
        ml = None
    return _render(
        request,
        "fleet.html",
        session,
        things=things,
        matching=matching,
        page=page_no,
        pages=pages,
        q=q,
        group=group,
        state=state,
        groups=queries.group_names(engine.store),
        counts=queries.fleet_counts(engine.store, now_ms, SILENT_AFTER_S, quarantine),
        alarms=queries.alarms_by_behavior(engine.store),
        events=queries.recent_events(engine.store, 25),
        ml=ml,
        silent_after=SILENT_AFTER_S,
    )


# ---- a thing ------------------------------------------------------------------------------------


@router.get("/things/{thing}")
def thing_page(request: Request, thing: str):
    session = _session(request)
    engine = request.app.state.engine
    last = engine.store.last_report(thing)
    if last is None:
        return _render(request, "missing.html", session, 404, what="thing", name=thing)
    charts = []
    for name in engine.store.profiles_for_thing(thing):
        doc = engine.store.get_profile(name) or {}
        for behavior in doc.get("behaviors", []):
            if behavior.get("metric"):
                charts.append(
                    {
                        "profile": name,
                        "behavior": behavior["name"],
                        "metric": behavior["metric"],
                        "threshold": series.threshold_of(engine.store, name, behavior),
                        "url": f"{PREFIX}/api/things/{quote(thing)}/series?"
                        + urlencode({"profile": name, "behavior": behavior["name"]}),
                    }
                )
    violations, _ = queries.violations_page(engine.store, None, thing=thing, size=100)
    quarantine = _quarantine_groups(engine)
    groups = engine.store.groups_of(thing)
    latest = latest_report(engine.store, thing)
    return _render(
        request,
        "thing.html",
        session,
        thing=thing,
        last_ms=last[1],
        report=report_view(latest["report"]) if latest else None,
        report_ms=latest and latest["time_ms"],
        charts=charts,
        violations=violations,
        groups=groups,
        profiles=engine.store.profiles_for_thing(thing),
        quarantined=[g for g in groups if g in quarantine],
        quarantine_group=quarantine[0],
        states=VERIFICATION_STATES,
        events=queries.recent_events(engine.store, 50, thing=thing),
        actions=queries.recent_actions(engine.store, thing),
    )


def _owner(item: Dict[str, Any]) -> str:
    if not isinstance(item, dict):
        return ""
    text = f"{item.get('process', '?')} (pid {item.get('pid')}"
    return text + (f", {item['user']})" if item.get("user") else ")")


def report_view(report: Dict[str, Any]) -> Dict[str, Any]:
    """Listening ports and connections of a report (long names), each with its owning process
    when the agent sent the socket_owners extension."""
    m = report.get("metrics") or {}
    owners = m.get("socket_owners") or {}
    by_port = {(o.get("protocol", "tcp"), o.get("port")): _owner(o) for o in owners.get("listening_ports") or []}
    by_conn = {(o.get("remote_addr"), o.get("local_port")): _owner(o) for o in owners.get("connections") or []}
    view: Dict[str, Any] = {
        "owners": bool(owners),
        "custom": report.get("custom_metrics") or {},
        "network": m.get("network_stats"),
        "report_id": (report.get("header") or {}).get("report_id"),
    }
    for proto in ("tcp", "udp"):
        group = m.get(f"listening_{proto}_ports") or {}
        view[proto] = [
            {"port": p.get("port"), "interface": p.get("interface"), "owner": by_port.get((proto, p.get("port")), "")}
            for p in group.get("ports") or []
        ]
        view[f"{proto}_total"] = group.get("total", len(view[proto]))
    est = (m.get("tcp_connections") or {}).get("established_connections") or {}
    view["connections"] = [
        {
            "remote": c.get("remote_addr"),
            "local_port": c.get("local_port"),
            "interface": c.get("local_interface"),
            "owner": by_conn.get((c.get("remote_addr"), c.get("local_port")), ""),
        }
        for c in est.get("connections") or []
    ]
    view["connections_total"] = est.get("total", len(view["connections"]))
    return view


@router.get("/api/things/{thing}/series")
def thing_series(request: Request, thing: str, profile: str, behavior: str):
    """The chart's data: {points: [{t, v}], threshold, violations: [{start, end}], source}."""
    _session(request)
    engine = request.app.state.engine
    doc = engine.store.get_profile(profile) or {}
    spec = next((b for b in doc.get("behaviors", []) if b.get("name") == behavior), None)
    if engine.store.last_report(thing) is None or spec is None or not spec.get("metric"):
        return JSONResponse({"error": "no such thing, profile or behavior"}, status_code=404)
    since_ms = engine.clock.now_ms() - CHART_WINDOW_S * 1000
    data = series.metric_points(engine, thing, spec["metric"], profile, behavior, since_ms)
    episodes, _ = queries.violations_page(engine.store, None, thing=thing, profile=profile, behavior=behavior, size=200)
    data.update(
        threshold=series.threshold_of(engine.store, profile, spec),
        band=series.ml_bands(engine.store, thing, profile, behavior, since_ms),
        violations=[{"start": v["start_ms"] / 1000.0, "end": v["end_ms"] and v["end_ms"] / 1000.0} for v in episodes],
    )
    return data


@router.post("/things/{thing}/quarantine")
async def quarantine(request: Request, thing: str):
    return await _respond(
        request, thing, {"type": "add-thing-to-group", "group": _quarantine_groups(request.app.state.engine)[0]}
    )


@router.post("/things/{thing}/release")
async def release(request: Request, thing: str):
    return await _respond(
        request, thing, {"type": "remove-thing-from-group", "group": _quarantine_groups(request.app.state.engine)[0]}
    )


@router.post("/things/{thing}/broker/{verb}")
async def broker_response(request: Request, thing: str, verb: str):
    """The broker's quarantine / release (reports and replies only), carried out by the engine's
    action runner after the request is logged (docs/actions.md)."""
    if verb not in ("quarantine", "release"):
        return Response(status_code=404)
    return await _respond(request, thing, {"type": verb})


async def _respond(request: Request, thing: str, action: Dict[str, Any]):
    """An operator's response through the engine facade (Engine.respond: written to the action
    log as the engine's own actions are, `by` console)."""
    session = _session(request)
    await _form(request, session)
    engine = request.app.state.engine
    back = f"{PREFIX}/things/{quote(thing)}"
    if engine.store.last_report(thing) is None:
        return _back(request, session, back, "error", f"no thing named {thing}")
    try:
        done = engine.respond(thing, action, by="console")
    except StoreError as exc:
        return _back(request, session, back, "error", str(exc))
    kind_of = "error" if done.get("outcome") == "failed" else "ok"
    return _back(request, session, back, kind_of, f"{done.get('detail')}: {done.get('outcome')}")


# ---- violations ---------------------------------------------------------------------------------


@router.get("/violations")
def violations_page(
    request: Request,
    status: str = "active",
    thing: str = "",
    profile: str = "",
    behavior: str = "",
    verification: str = "",
    page: str = "0",
):
    session = _session(request)
    engine = request.app.state.engine
    active = {"active": True, "ended": False}.get(status)
    page_no = _int(page)
    rows, matching = queries.violations_page(engine.store, active, thing, profile, behavior, verification, page_no)
    return _render(
        request,
        "violations.html",
        session,
        violations=rows,
        matching=matching,
        page=page_no,
        pages=max(1, -(-matching // queries.PAGE_SIZE)),
        status=status if active is not None else "all",
        thing=thing,
        profile=profile,
        behavior=behavior,
        verification=verification,
        states=VERIFICATION_STATES,
        profiles=[p["securityProfileName"] for p in engine.list_profiles()],
    )


@router.post("/violations/{violation_id}/verify")
async def verify(request: Request, violation_id: str):
    session = _session(request)
    form = await _form(request, session)
    back = form.get("back", "")
    back = back if back.startswith(PREFIX + "/") else PREFIX + "/violations"  # no open redirect
    try:
        request.app.state.engine.verify(violation_id, form.get("state", ""), form.get("description") or None)
    except StoreError as exc:
        return _back(request, session, back, "error", str(exc))
    return _back(request, session, back, "ok", f"violation {violation_id} marked {form.get('state')}")


# ---- profiles -----------------------------------------------------------------------------------


@router.get("/profiles")
def profiles(request: Request):
    session = _session(request)
    engine = request.app.state.engine
    return _render(request, "profiles.html", session, profiles=engine.list_profiles(), document=None, result=None)


@router.get("/profiles/{name}")
def profile_page(request: Request, name: str):
    session = _session(request)
    engine = request.app.state.engine
    try:
        described = engine.describe_profile(name)
    except StoreError:
        return _render(request, "missing.html", session, 404, what="security profile", name=name)
    alarms = [a for a in queries.alarms_by_behavior(engine.store) if a["profile"] == name]
    return _render(
        request,
        "profile.html",
        session,
        p=described,
        alarms=alarms,
        document=json.dumps(described["profile"], indent=2),
    )


@router.post("/profiles/submit")
async def submit_profile(request: Request):
    """Validate (and with action=apply, apply) a CreateSecurityProfile document."""
    session = _session(request)
    form = await _form(request, session)
    engine = request.app.state.engine
    text, target = form.get("document", ""), (form.get("target") or "").strip() or None
    result: Dict[str, Any]
    try:
        if len(text) > MAX_DOCUMENT:
            raise ProfileError(f"the document is larger than {MAX_DOCUMENT // 1024} KiB")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ProfileError(f"not JSON: {exc}") from None
        profile = load_profile(doc)
        if form.get("action") == "apply":
            profile, created = engine.apply_profile(doc, attach=target)
            log.info("console: %s security profile %s", "created" if created else "replaced", profile.name)
            return _back(
                request,
                session,
                f"{PREFIX}/profiles/{quote(profile.name)}",
                "ok",
                f"{'created' if created else 'replaced'} {profile.name}"
                + (f", attached to {target}" if target else ""),
            )
        result = {"ok": True, "text": f"valid: {profile.name}, {len(profile.behaviors)} behavior(s)"}
    except (ProfileError, StoreError) as exc:
        result = {"ok": False, "text": str(exc)}
    return _render(
        request, "profiles.html", session, profiles=engine.list_profiles(), document=text, target=target, result=result
    )


@router.post("/profiles/{name}/targets")
async def profile_targets(request: Request, name: str):
    session = _session(request)
    form = await _form(request, session)
    engine = request.app.state.engine
    target = (form.get("target") or "").strip()
    back = f"{PREFIX}/profiles/{quote(name)}"
    try:
        if form.get("action") == "detach":
            engine.detach(name, target)
            return _back(request, session, back, "ok", f"detached from {target}")
        engine.attach(name, target)
        return _back(request, session, back, "ok", f"attached to {target}")
    except StoreError as exc:
        return _back(request, session, back, "error", str(exc))


# ---- audit --------------------------------------------------------------------------------------


@router.get("/audit")
def audit(request: Request, task: str = "", check: str = ""):
    session = _session(request)
    engine = request.app.state.engine
    tasks = audit_http.handle("list_tasks", engine, {}, {}, None)["tasks"][:20]
    task_id = task or (tasks[0]["taskId"] if tasks else "")
    findings = (
        audit_http.handle("list_findings", engine, {}, {"taskId": task_id, "checkName": check}, None)["findings"]
        if task_id
        else []
    )
    by_check: Dict[str, Dict[str, Any]] = {}
    for item in findings:
        entry = by_check.setdefault(item["checkName"], {"severity": item.get("severity"), "count": 0, "suppressed": 0})
        entry["count"] += 1
        entry["suppressed"] += bool(item.get("isSuppressed"))
    from garrison.detect.audit.mitigate import ACTIONS
    from garrison.detect.audit.checks import resource_key

    for item in findings:
        item["resourceKey"] = resource_key(item["nonCompliantResource"]["resourceIdentifier"])
    return _render(
        request,
        "audit.html",
        session,
        tasks=tasks,
        task_id=task_id,
        check=check,
        findings=findings,
        by_check=sorted(by_check.items()),
        actions=ACTIONS,
        suppressions=audit_http.handle("list_suppressions", engine, {}, {}, None)["suppressions"],
    )


@router.post("/audit/{what}")
async def audit_post(request: Request, what: str):
    session = _session(request)
    form = await _form(request, session)
    engine = request.app.state.engine
    back = PREFIX + "/audit" + (f"?{urlencode({'task': form['task']})}" if form.get("task") else "")
    try:
        if what == "run":
            task = audit_http.handle("start_audit", engine, {}, {}, {})
            return _back(
                request,
                session,
                f"{PREFIX}/audit?task={task['taskId']}",
                "ok",
                f"audit {task['taskId']}: {task['taskStatistics']['nonCompliantChecks']} non-compliant check(s)",
            )
        if what == "suppress":
            body = {
                "checkName": form.get("check"),
                "resourceKey": form.get("resource"),
                "suppressIndefinitely": True,
                "description": form.get("description") or "suppressed in the console",
            }
            audit_http.handle("create_suppression", engine, {}, {}, body)
            return _back(request, session, back, "ok", f"suppressed {form.get('check')} on {form.get('resource')}")
        if what == "mitigate":
            apply = form.get("apply") == "yes"
            body = {
                "taskId": form.get("task"),
                "checkName": form.get("check"),
                "action": form.get("action"),
                "apply": apply,
            }
            done = audit_http.handle("start_mitigation", engine, {}, {}, body)["actions"]
            lines = "; ".join(str(d.get("detail") or d.get("outcome") or d) for d in done[:10]) or "nothing to do"
            return _back(request, session, back, "ok", f"{'applied' if apply else 'dry run'}: {lines}")
    except StoreError as exc:
        return _back(request, session, back, "error", str(exc))
    return Response(status_code=404)


# ---- live refresh -------------------------------------------------------------------------------


@router.get("/api/changes")
def changes(request: Request):
    _session(request, touch=False)
    return {"mark": queries.change_mark(request.app.state.engine.store)}


def install(app) -> None:
    """Mount the console on the API's FastAPI application."""
    app.state.console_sessions = Sessions()
    app.include_router(router)
    app.mount(PREFIX + "/static", StaticFiles(directory=str(HERE / "static")), name="console-static")

    @app.exception_handler(SignIn)
    async def sign_in(request: Request, exc: SignIn):
        if request.method == "GET" and "/api/" not in request.url.path:
            return RedirectResponse(PREFIX + "/login", status_code=303)
        return JSONResponse({"error": "sign in first"}, status_code=401)

    @app.exception_handler(PermissionError)
    async def forbidden(request: Request, exc: PermissionError):
        return JSONResponse({"error": str(exc)}, status_code=403)
