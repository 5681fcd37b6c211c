"""The console (garrison.detect.console) over real HTTP on loopback: sessions, CSRF, pages, the
chart data, paging a 10,000-thing fleet, and GET /metrics parsed by prometheus-client's parser."""
import json
import re
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from garrison.detect.api.server import ApiServer
from garrison.detect.clock import ManualClock
from garrison.detect.config import Config
from garrison.detect.engine import Engine
from garrison.detect.state.store import Store

from api_support import post_body_after_answer
from console_support import Browser
from engine_support import behavior, profile, validated

TOKEN = "console-test-token"
PROFILE = profile("Ports", behavior("few-ports", "aws:num-listening-tcp-ports", "less-than", {"count": 3}),
                  behavior("allowed", "aws:listening-tcp-ports", "in-port-set", {"ports": [22]}))


def _served(tmp_path, config=None):
    clock = ManualClock()
    engine = Engine(Store(tmp_path / "console.db"), clock, config or Config())
    return ApiServer(engine, TOKEN, "127.0.0.1", 0).start(), engine, clock


@pytest.fixture
def served(tmp_path):
    server, engine, clock = _served(tmp_path)
    yield server, engine, clock
    server.stop()
    engine.store.close()


def _alarm(engine, clock, thing="cam-1"):
    engine.apply_profile(PROFILE, attach="all")
    engine.accept(thing, validated(tcp_ports=[22], report_id=1), clock.now_ms())
    clock.advance(300)
    events = engine.accept(thing, validated(tcp_ports=[22, 80, 4444, 8080], report_id=2), clock.now_ms())
    assert {e.event_type for e in events} == {"in-alarm"}
    return events


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_the_session(served):
    server, _, _ = served
    browser = Browser(server.url)
    status, headers, _ = browser.get("/console/fleet")
    assert status == 303 and headers["location"] == "/console/login"
    status, _, text = browser.post("/console/login", {"token": "wrong"})
    assert status == 401 and "not the API token" in text and not browser.cookies
    csrf = browser.sign_in(TOKEN)
    cookie = browser.last_set_cookie[0] if browser.last_set_cookie else ""
    status, headers, _ = browser.get("/console/fleet")
    assert status == 200 and headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in headers["content-security-policy"] and headers["cache-control"] == "no-store"
    # the cookie's attributes, as the login answer set them
    login = Browser(server.url)
    login.post("/console/login", {"token": TOKEN})
    set_cookie = login.last_set_cookie[0].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/console" in set_cookie
    stolen = dict(browser.cookies)
    # signing out without the CSRF token is refused; with it, the session ends on the server
    assert browser.post("/console/logout", {})[0] == 403
    status, headers, _ = browser.post("/console/logout", {"csrf": csrf})
    assert status == 303 and headers["location"] == "/console/login"
    replay = Browser(server.url)
    replay.cookies = stolen               # the old cookie, kept by an attacker: dead
    assert replay.get("/console/fleet")[0] == 303
    assert replay.get("/console/api/changes")[0] == 401
    assert cookie is not None


def test_a_form_that_decodes_to_lone_surrogates_is_refused_not_a_500(served):
    """A multipart form may name its charset; UTF-7 turns "+2AA-" into a lone surrogate, which
    the token comparison could not encode: a 500 and a traceback in the log for anyone."""
    server, _, _ = served
    body = b'--x\r\nContent-Disposition: form-data; name="token"\r\n\r\n+2AA-\r\n--x--\r\n'
    request = urllib.request.Request(server.url + "/console/login", data=body, method="POST", headers={
        "Content-Type": "multipart/form-data; boundary=x; charset=utf-7"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401 and b"not the API token" in refused.value.read()
    # and a signed-in form's CSRF token the same way: refused (403), not a 500
    browser = Browser(server.url)
    browser.sign_in(TOKEN)
    body = body.replace(b'name="token"', b'name="csrf"')
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    request = urllib.request.Request(server.url + "/console/logout", data=body, method="POST", headers={
        "Content-Type": "multipart/form-data; boundary=x; charset=utf-7", "Cookie": cookie})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


def test_forged_cookies_and_posts_without_csrf_are_refused(served):
    server, engine, clock = served
    _alarm(engine, clock)
    browser = Browser(server.url)
    csrf = browser.sign_in(TOKEN)
    sid, _, signature = browser.cookies["garrison_console"].rpartition(".")
    forged = Browser(server.url)
    forged.cookies = {"garrison_console": f"{sid}.{'0' * len(signature)}"}
    assert forged.get("/console/fleet")[0] == 303
    assert forged.post("/console/things/cam-1/quarantine", {"csrf": csrf})[0] == 401  # no body from strangers
    violation = engine.active_violations("cam-1")[0]["violationId"]
    assert browser.post(f"/console/violations/{violation}/verify", {"state": "TRUE_POSITIVE"})[0] == 403
    assert browser.post(f"/console/violations/{violation}/verify", {"state": "TRUE_POSITIVE", "csrf": "x" + csrf})[0] == 403
    assert engine.active_violations("cam-1")[0].get("verificationState") is None
    status, headers, _ = browser.post(f"/console/violations/{violation}/verify",
                                      {"state": "BENIGN_POSITIVE", "description": "a test port", "csrf": csrf})
    assert status == 303
    record = engine.active_violations("cam-1")[0]
    assert record["verificationState"] == "BENIGN_POSITIVE" and record["verificationStateDescription"] == "a test port"
    # a bearer token does not stand in for a session (the console is not the API)
    status, _, _ = Browser(server.url).request("GET", "/console/fleet", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 303


def test_a_post_refused_before_its_body_is_read_is_answered_not_reset(served):
    """The 401 leaves before the body is read; the server then closes in stages (FIN, the rest of
    the body read and discarded, the close), so no unread data makes the kernel reset the
    connection under the client. Closed at once (before), most of these met a reset."""
    server, engine, clock = served
    _alarm(engine, clock)
    browser = Browser(server.url)
    csrf = browser.sign_in(TOKEN)
    sid, _, signature = browser.cookies["garrison_console"].rpartition(".")
    forged = f"Cookie: garrison_console={sid}.{'0' * len(signature)}\r\n"
    form = "Content-Type: application/x-www-form-urlencoded\r\n"
    body = f"csrf={csrf}&note={'x' * 4000}".encode()
    for i in range(200):  # no cookie, then a forged one
        answer = post_body_after_answer(server, "/console/things/cam-1/quarantine", form + forged * (i % 2), body)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"sign in first" in answer, (i, answer[:200])
    # a client that would keep the connection open is answered and closed all the same: what is
    # left of its body is then read within the server's bounds, not by uvicorn's keep-alive
    answer = post_body_after_answer(server, "/console/things/cam-1/quarantine", form + forged, body, "keep-alive")
    assert answer.startswith(b"HTTP/1.1 401 ") and b"\r\nconnection: close\r\n" in answer.lower()
    assert "quarantine" not in engine.store.groups_of("cam-1")
    assert browser.get("/console/fleet")[0] == 200                # the server serves on


def test_pages_show_the_fleet_a_thing_and_its_chart_data(served):
    server, engine, clock = served
    _alarm(engine, clock)
    browser = Browser(server.url)
    csrf = browser.sign_in(TOKEN)
    status, _, fleet = browser.get("/console/fleet")
    assert status == 200
    assert re.search(r'id="count-alarm">\s*<span class="n">1</span>', fleet)
    assert 'data-thing="cam-1"' in fleet and "Ports / allowed" in fleet and "Ports / few-ports" in fleet
    status, _, page = browser.get("/console/things/cam-1")
    assert status == 200 and "4444" in page and 'id="thing-alarm"' in page
    url = re.search(r'data-series="([^"]*behavior=few-ports[^"]*)"', page).group(1).replace("&amp;", "&")
    status, _, body = browser.get(url)
    data = json.loads(body)
    assert data["points"] and data["points"][-1]["v"] == 4.0            # the violating datapoint: 4 ports
    assert data["threshold"]["value"] == 3.0 and data["violations"][0]["end"] is None
    status, _, text = browser.get("/console/things/nobody")
    assert status == 404 and "No thing named" in text                     # a clear "not found" page
    # quarantine and release, through the mitigation action (it lands in the action log)
    assert browser.post("/console/things/cam-1/quarantine", {"csrf": csrf})[0] == 303
    assert "quarantine" in engine.store.groups_of("cam-1")
    assert "quarantined" in browser.get("/console/fleet?state=quarantined")[2]
    assert browser.post("/console/things/cam-1/release", {"csrf": csrf})[0] == 303
    assert "quarantine" not in engine.store.groups_of("cam-1")
    assert [(a["outcome"], a["action"].get("by")) for a in engine.store.list_actions("cam-1")] == \
        [("done", "console"), ("done", "console")]
    # the broker's quarantine: logged as pending for the engine's action runner (none runs here)
    assert browser.post("/console/things/cam-1/broker/quarantine", {"csrf": csrf})[0] == 303
    last = engine.store.list_actions("cam-1")[-1]
    assert last["action"]["type"] == "quarantine" and last["outcome"] == "pending"
    assert "quarantine thing cam-1 on the broker" in browser.get("/console/things/cam-1")[2]
    assert browser.post("/console/things/cam-1/broker/shutdown", {"csrf": csrf})[0] == 404
    for path in ("/console/violations", "/console/violations?status=all&thing=cam-1", "/console/profiles",
                 "/console/profiles/Ports", "/console/audit"):
        status, _, text = browser.get(path)
        assert status == 200, (path, text[:500])


def test_profiles_are_validated_and_applied_from_the_console(served):
    server, engine, _ = served
    browser = Browser(server.url)
    csrf = browser.sign_in(TOKEN)
    bad = dict(PROFILE, behaviors=[behavior("x", "aws:num-listening-tcp-ports", "in-port-set", {"ports": [1]})])
    status, _, text = browser.post("/console/profiles/submit", {"document": json.dumps(bad), "action": "apply", "csrf": csrf})
    assert status == 200 and 'class="flash error" id="validation"' in text and engine.list_profiles() == []
    status, _, text = browser.post("/console/profiles/submit", {"document": json.dumps(PROFILE), "action": "validate",
                                                                "csrf": csrf})
    assert "valid: Ports, 2 behavior(s)" in text and engine.list_profiles() == []
    status, _, text = browser.post("/console/profiles/submit", {"document": json.dumps(PROFILE), "action": "apply",
                                                                "target": "group:cams", "csrf": csrf})
    assert status == 200 and "no thing group named &#39;cams&#39;" in text and engine.list_profiles() == []
    engine.create_group("cams")
    status, headers, _ = browser.post("/console/profiles/submit", {"document": json.dumps(PROFILE), "action": "apply",
                                                                   "target": "group:cams", "csrf": csrf})
    assert status == 303 and engine.list_profiles()[0]["targets"] == ["group:cams"]
    assert browser.post("/console/profiles/Ports/targets", {"target": "all", "action": "attach", "csrf": csrf})[0] == 303
    assert sorted(engine.list_profiles()[0]["targets"]) == ["all", "group:cams"]


def test_the_fleet_page_pages_10000_things_in_the_database(served):
    server, engine, clock = served
    now = clock.now_ms()
    with engine.store.transaction():
        engine.store._conn.executemany(
            "INSERT INTO things (name, registered_ms, last_report_id, last_received_ms, reports) VALUES (?, ?, 1, ?, 1)",
            [(f"dev-{i:05d}", now, now - (i % 3) * 3600_000) for i in range(10000)])
    browser = Browser(server.url)
    browser.sign_in(TOKEN)
    started = time.monotonic()
    status, _, page = browser.get("/console/fleet?state=silent&q=dev-09&page=2")
    elapsed = time.monotonic() - started
    rows = re.findall(r'data-thing="([^"]+)"', page)
    # silent: i % 3 != 0 among dev-09000..dev-09999 -> 666 matching, page 3 shows 50 of them
    assert status == 200 and "666 matching" in page and len(rows) == 50
    assert rows[0] == "dev-09151" and all(int(r[4:]) % 3 for r in rows)
    assert elapsed < 2.0, elapsed
    assert re.search(r'id="count-total">\s*<span class="n">10000</span>', page)


def test_metrics_need_the_token_and_parse_as_prometheus_text(served):
    server, engine, clock = served
    _alarm(engine, clock)
    request = urllib.request.Request(server.url + "/metrics")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("garrison_violation_events_total", (("behavior", "allowed"), ("event", "raised"),
                                                         ("profile", "Ports")))] == 1
    assert samples[("garrison_active_violations", (("behavior", "few-ports"), ("profile", "Ports")))] == 1
    assert samples[("garrison_things", (("state", "alarm"),))] == 1
    assert samples[("garrison_things_total", ())] == 1


def test_metrics_can_be_public_when_configured(tmp_path):
    server, engine, _ = _served(tmp_path, Config(metrics_public=True))
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            assert response.status == 200 and b"garrison_things_total 0.0" in response.read()
        with pytest.raises(urllib.error.HTTPError) as refused:   # the rest of the API still wants the token
            urllib.request.urlopen(server.url + "/things", timeout=10)
        assert refused.value.code == 401
    finally:
        server.stop()
        engine.store.close()


def test_audit_runs_suppresses_and_mitigates_dry_run_from_the_console(tmp_path):
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener 1883 0.0.0.0\nallow_anonymous true\nlog_dest none\n")
    server, engine, _ = _served(tmp_path, Config(audit={"broker_config": str(conf)}))
    try:
        browser = Browser(server.url)
        csrf = browser.sign_in(TOKEN)
        assert "No audit has run yet" in browser.get("/console/audit")[2]
        status, headers, _ = browser.post("/console/audit/run", {"csrf": csrf})
        assert status == 303
        task = headers["location"].split("task=")[1]
        page = browser.get(headers["location"])[2]
        assert "BROKER_ANONYMOUS_ACCESS_CHECK" in page and "CRITICAL" in page
        status, _, _ = browser.post("/console/audit/mitigate", {"csrf": csrf, "task": task, "apply": "no",
                                                                 "check": "LOGGING_DISABLED_CHECK", "action": "ENABLE_IOT_LOGGING"})
        assert status == 303
        page = browser.get(f"/console/audit?task={task}")[2]
        assert "dry run:" in page and "log_dest none" in conf.read_text()        # nothing changed
        key = re.search(r'name="check" value="BROKER_ANONYMOUS_ACCESS_CHECK"><input type="hidden" name="resource" '
                        r'value="([^"]+)"', page).group(1)
        assert browser.post("/console/audit/suppress", {"csrf": csrf, "task": task, "check": "BROKER_ANONYMOUS_ACCESS_CHECK",
                                                         "resource": key})[0] == 303
        assert "BROKER_ANONYMOUS_ACCESS_CHECK: " + key in browser.get("/console/audit")[2]
    finally:
        server.stop()
        engine.store.close()


def test_sessions_expire_on_the_server_and_polling_does_not_keep_them_alive():
    from garrison.detect.console.sessions import Sessions
    now = [1000.0]
    sessions = Sessions(lifetime_s=100, idle_s=10, clock=lambda: now[0])
    session, cookie = sessions.create()
    now[0] += 8
    assert sessions.get(cookie, touch=False) is session       # the live refresh polls...
    now[0] += 8
    assert sessions.get(cookie) is None                        # ...but 16 s without the operator: idle
    session, cookie = sessions.create()
    for _ in range(11):                                        # active all along, still ends at 100 s
        now[0] += 9
        assert (sessions.get(cookie) is not None) == (now[0] - session.created <= 100)
    assert sessions.get(cookie.replace(".", ".0", 1)) is None and sessions.get("nodot") is None


def test_a_deleted_thing_takes_its_latest_report_along(served):
    from garrison.detect.state.latest import latest_report
    server, engine, clock = served
    _alarm(engine, clock)
    assert latest_report(engine.store, "cam-1")["report"]["header"]["report_id"] == 2
    engine.delete_thing("cam-1")
    assert latest_report(engine.store, "cam-1") is None


def test_charts_read_the_metric_history_when_the_engine_keeps_one(tmp_path):
    """The swap to ListMetricValues (Engine.list_metric_values, branch broker) is one function:
    an engine that has it is read page by page, AWS MetricValues plotted as numbers."""
    from garrison.detect.console import series

    class WithHistory:
        store = Store(tmp_path / "h.db")
        asked = []

        def list_metric_values(self, thing, metric, start_s=None, next_token=None):
            self.asked.append((thing, metric, start_s, next_token))
            if next_token is None:
                return {"metricDatumList": [{"timestamp": 100.0, "value": {"count": 2}},
                                            {"timestamp": 400.0, "value": {"ports": [22, 80, 443]}}], "nextToken": "p2"}
            return {"metricDatumList": [{"timestamp": 700.0, "value": {"number": 1.5}}]}

    engine = WithHistory()
    data = series.metric_points(engine, "cam-1", "aws:num-listening-tcp-ports", "P", "b", since_ms=50_000)
    assert data == {"source": "metric-history", "points": [{"t": 100.0, "v": 2.0}, {"t": 400.0, "v": 3.0},
                                                            {"t": 700.0, "v": 1.5}]}
    assert engine.asked == [("cam-1", "aws:num-listening-tcp-ports", 50.0, None),
                            ("cam-1", "aws:num-listening-tcp-ports", 50.0, "p2")]
    engine.store.close()
