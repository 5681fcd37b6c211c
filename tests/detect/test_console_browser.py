"""The console in a real browser (Debian's headless Chromium through Selenium): sign in, watch a
thing go into alarm after a real `garrison-agent run --once` report reaches a real
`garrison-detect serve` over a real Mosquitto (the page refreshes itself, no reload), open the
thing and find its chart drawn from the datapoints, verify the violation, sign out and be refused."""
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from garrison.detect.console import browser as chromium
from fixtures import free_port, wait_for

from engine_support import behavior, profile

why_not = chromium.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))

DETECT = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]
AGENT = [shutil.which("garrison-agent")] if shutil.which("garrison-agent") else [sys.executable, "-m", "garrison.agent.cli"]
TOKEN = "browser-test-token"
# normal: no listening TCP port; this machine has at least the test's broker and the engine's API
PROFILE = profile("Lockdown", behavior("no-listeners", "aws:num-listening-tcp-ports", "less-than", {"count": 1}))


@pytest.fixture
def engine(tmp_path, mosquitto):
    (tmp_path / "lockdown.json").write_text(json.dumps(PROFILE))
    (tmp_path / "engine.toml").write_text('[[profiles]]\nfile = "lockdown.json"\nattach = "all"\n')
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(DETECT + ["serve", "--broker", mosquitto.url, "--db", str(tmp_path / "engine.db"),
                                          "--config", str(tmp_path / "engine.toml"), "--min-report-interval", "0",
                                          "--api-bind", f"127.0.0.1:{port}", "--api-token", TOKEN],
                                stdout=log, stderr=log)
    try:
        wait_for(lambda: "serving:" in log_path.read_text() or proc.poll() is not None, 30, "serve to start")
        assert proc.poll() is None, log_path.read_text()
        yield {"url": f"http://127.0.0.1:{port}", "broker": mosquitto.url, "log": log_path}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _api(engine, path):
    request = urllib.request.Request(engine["url"] + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_real_report_raises_an_alarm_the_operator_sees_plots_verifies(engine, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    started = time.monotonic()
    with chromium.Browser() as b:
        d = b.driver
        # a form post navigates and the 3 s refresh replaces parts of the page: an element read
        # in a condition may be stale by the time its text is read; the condition is read again
        wait = WebDriverWait(d, 20, ignored_exceptions=(StaleElementReferenceException,))
        d.get(engine["url"] + "/console/fleet")
        assert d.current_url.endswith("/console/login")                       # no session: the sign-in form
        d.find_element(By.ID, "token").send_keys("not-the-token")
        d.find_element(By.ID, "sign-in").click()
        wait.until(lambda _: "not the API token" in d.find_element(By.ID, "login-error").text)
        d.find_element(By.ID, "token").send_keys(TOKEN)
        d.find_element(By.ID, "sign-in").click()
        wait.until(lambda _: d.current_url.endswith("/console/fleet"))
        assert "No things yet" in d.find_element(By.ID, "main").text
        wait.until(lambda _: "ok" in d.find_element(By.ID, "live").get_attribute("class"))
        d.execute_script("window.__sameDocument = true")                     # gone if the page reloads

        agent = subprocess.run(AGENT + ["run", "--once", "--thing", "cam-7", "--broker", engine["broker"],
                                        "--state-dir", str(tmp_path / "agent"), "--reply-timeout", "20"],
                               capture_output=True, text=True, timeout=60)
        assert agent.returncode == 0, agent.stderr

        row = wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, 'tr[data-thing="cam-7"].alarm'))
        assert "in alarm" in row[0].text
        assert d.execute_script("return window.__sameDocument === true")     # refreshed in place
        assert d.find_element(By.CSS_SELECTOR, "#count-alarm .n").text == "1"
        assert "Lockdown / no-listeners" in d.find_element(By.ID, "alarms").text

        row[0].find_element(By.LINK_TEXT, "cam-7").click()
        figure = wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, 'figure.chart[data-drawn="1"]'))[0]
        data = d.execute_script("return window.garrisonCharts['no-listeners']")
        assert int(figure.get_attribute("data-points")) == len(data["points"]) >= 1
        assert data["points"][-1]["v"] >= 1 and data["threshold"]["value"] == 1
        assert data["violations"] and data["violations"][0]["end"] is None
        painted = d.execute_script("""
            const c = arguments[0].querySelector('canvas'); if (!c) return 0;
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n;""", figure)
        assert painted > 500                                                  # the plot was drawn on the canvas
        assert "Listening TCP ports" in d.find_element(By.ID, "main").text

        form = d.find_element(By.CSS_SELECTOR, "#violations form.verify")
        Select(form.find_element(By.NAME, "state")).select_by_value("TRUE_POSITIVE")
        form.find_element(By.NAME, "description").send_keys("nothing should listen on a camera")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda _: "marked TRUE_POSITIVE" in d.find_element(By.ID, "main").text)
        violation = _api(engine, "/active-violations?thingName=cam-7")["activeViolations"][0]
        assert violation["verificationState"] == "TRUE_POSITIVE"
        assert violation["verificationStateDescription"] == "nothing should listen on a camera"

        d.find_element(By.ID, "sign-out").click()
        wait.until(lambda _: d.current_url.endswith("/console/login"))
        d.get(engine["url"] + "/console/things/cam-7")
        assert d.current_url.endswith("/console/login")                      # refused: back to sign-in
        status = d.execute_script("return fetch('/console/api/changes').then(r => r.status)")
        assert status == 401
    assert time.monotonic() - started < 60
