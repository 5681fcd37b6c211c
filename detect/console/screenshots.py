"""Screenshots of every console page, in headless Chromium (Debian's chromium + chromium-driver).

    python3 -m garrison.detect.console.screenshots OUTDIR
        a sample fleet in a temporary database (40 things, a profile, alarms raised and cleared,
        an audit), served on a free loopback port, photographed page by page;
    python3 -m garrison.detect.console.screenshots OUTDIR --url http://127.0.0.1:8765 --token TOKEN
        the pages of a running engine (`serve`, `demo`) instead; --thing names the thing to show.

--size WxH sets the window, --viewport-only photographs it instead of the whole page (the README's
picture: --size 1280x800 --viewport-only). Writes fleet.png, thing.png, violations.png, profiles.png, profile.png, audit.png, login.png.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import quote

PAGES = ("fleet", "thing", "violations", "profiles", "profile", "audit")
SAMPLE_PROFILE = {
    "securityProfileName": "Cameras",
    "securityProfileDescription": "What a camera does: few listening ports, none but SSH, few connections.",
    "behaviors": [
        {
            "name": "FewListeningPorts",
            "metric": "aws:num-listening-tcp-ports",
            "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 3}},
        },
        {
            "name": "OnlySsh",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 554]}},
        },
        {
            "name": "FewConnections",
            "metric": "aws:num-established-tcp-connections",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 20}},
        },
    ],
}


def sample_engine(workdir: Path):
    """An engine over a temporary database holding a small fleet with some history."""
    from garrison.agent import report
    from garrison.collectors.base import Connection, ListeningSocket
    from garrison.detect.clock import ManualClock
    from garrison.detect.engine import Engine
    from garrison.detect.ingest.validate import validate
    from garrison.detect.state.store import Store

    from garrison.detect.config import Config

    clock = ManualClock(time.time() - 6 * 3600)
    broker_conf = workdir / "mosquitto.conf"  # a careless broker, for the audit to find
    broker_conf.write_text("listener 1883 0.0.0.0\nallow_anonymous true\nlog_dest none\n")
    engine = Engine(
        Store(str(workdir / "sample.db")), clock, Config(audit={"broker_config": str(broker_conf)}), ml=None
    )
    engine.apply_profile(SAMPLE_PROFILE, attach="all")
    engine.create_group("lobby")
    engine.create_group("quarantine")
    rng = random.Random(7)
    ids: Dict[str, int] = {}

    def send(thing: str, ports: List[int], conns: int, owners: bool = False) -> None:
        ids[thing] = ids.get(thing, 0) + 1
        doc = validate(
            report.build(
                int(clock.now_ms()) + ids[thing],
                listening_tcp=[ListeningSocket("tcp", 4, "0.0.0.0", p) for p in ports],
                connections=[
                    Connection(4, "192.0.2.10", 40000 + i, f"198.51.100.{i + 1}", 443, "eth0") for i in range(conns)
                ],
            )
        )
        if owners:
            names = {22: ("sshd", "root"), 554: ("rtsp-server", "camera"), 4444: ("nc", "www-data")}
            doc["metrics"]["socket_owners"] = {
                "listening_ports": [
                    {
                        "port": p,
                        "protocol": "tcp",
                        "pid": 300 + p % 1000,
                        "process": names.get(p, ("?",))[0],
                        "user": names.get(p, ("?", "root"))[1],
                    }
                    for p in ports
                ],
                "connections": [
                    {
                        "remote_addr": f"198.51.100.{i + 1}:443",
                        "local_port": 40000 + i,
                        "pid": 812,
                        "process": "uploader",
                        "user": "camera",
                    }
                    for i in range(conns)
                ],
            }
        engine.accept(thing, doc, clock.now_ms())

    things = [f"cam-{i:03d}" for i in range(1, 41)]
    for step in range(24):
        for thing in things[:6] if step < 23 else things:
            if thing == "cam-001":
                ports = [22, 554] + ([4444, 8080] if step % 6 in (3, 4) else [])
                send(thing, ports, 3 + step % 5, owners=True)
            elif thing == "cam-002" and step > 18:
                send(thing, [22, 554, 31337], rng.randint(2, 6))
            elif thing == "cam-003" and step > 20:
                send(thing, [22, 554], 25)
            else:
                send(thing, [22, 554], rng.randint(1, 8))
        clock.advance(900)
    for thing in things[30:]:
        engine.add_to_group("lobby", thing)
    engine.add_to_group("quarantine", "cam-002")
    violation = engine.active_violations("cam-002")[0]["violationId"]
    engine.verify(violation, "TRUE_POSITIVE", "an unknown listener on 31337")
    try:
        from garrison.detect.audit import http as audit_http

        audit_http.handle("start_audit", engine, {}, {}, {})
    except Exception as exc:  # the audit's sources may be absent here: the page says so
        print(f"screenshots: no sample audit ({exc})", file=sys.stderr)
    return engine


def shoot(
    url: str,
    token: str,
    outdir: Path,
    thing: str,
    profile: str,
    width: int = 1440,
    height: int = 1000,
    full_page: bool = True,
) -> List[Path]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from garrison.detect.console.browser import Browser

    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    with Browser(width, height) as b:
        d = b.driver
        d.get(url + "/console/login")
        written.append(outdir / "login.png")
        d.save_screenshot(str(written[-1]))
        d.find_element(By.ID, "token").send_keys(token)
        d.find_element(By.ID, "sign-in").click()
        WebDriverWait(d, 15).until(lambda _: d.current_url.endswith("/console/fleet"))
        paths = {
            "fleet": "/console/fleet",
            "thing": f"/console/things/{quote(thing)}",
            "violations": "/console/violations?status=all",
            "profiles": "/console/profiles",
            "profile": f"/console/profiles/{quote(profile)}",
            "audit": "/console/audit",
        }
        for name in PAGES:
            d.get(url + paths[name])
            if name == "thing":
                WebDriverWait(d, 15).until(
                    lambda _: all(
                        f.get_attribute("data-drawn")
                        or f.get_attribute("data-points") == "0"
                        or f.get_attribute("data-error")
                        for f in d.find_elements(By.CSS_SELECTOR, "figure.chart")
                    )
                )
            if full_page:
                page_height = d.execute_script("return document.documentElement.scrollHeight")
                d.set_window_size(width, min(max(height, page_height), 3000))
                time.sleep(0.2)  # one frame for the resize to lay out
            written.append(outdir / f"{name}.png")
            d.save_screenshot(str(written[-1]))
            d.set_window_size(width, height)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m garrison.detect.console.screenshots",
        description="Save a screenshot of each console page (headless Chromium).",
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--url", help="a running engine's API address (default: a sample fleet served here)")
    parser.add_argument("--token", help="its API token (with --url)")
    parser.add_argument("--thing", default="cam-001", help="the thing whose page to photograph")
    parser.add_argument("--profile", default="Cameras", help="the profile whose page to photograph")
    parser.add_argument("--size", default="1440x1000", metavar="WxH", help="the browser window (default 1440x1000)")
    parser.add_argument("--viewport-only", action="store_true", help="photograph the window, not the whole page")
    args = parser.parse_args(argv)
    try:
        width, height = (int(n) for n in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size: expected WIDTHxHEIGHT, got {args.size!r}")
    view: Dict[str, Any] = dict(width=width, height=height, full_page=not args.viewport_only)
    from garrison.detect.console.browser import available

    problem = available()
    if problem:
        print(f"screenshots: {problem}", file=sys.stderr)
        return 2
    if args.url:
        if not args.token:
            parser.error("--url needs --token")
        written = shoot(args.url.rstrip("/"), args.token, args.outdir, args.thing, args.profile, **view)
    else:
        from garrison.detect.api.server import ApiServer

        with tempfile.TemporaryDirectory(prefix="garrison-screenshots-") as tmp:
            engine = sample_engine(Path(tmp))
            server = ApiServer(engine, "screenshots", "127.0.0.1", 0).start()
            try:
                written = shoot(server.url, "screenshots", args.outdir, args.thing, args.profile, **view)
            finally:
                server.stop()
                engine.store.close()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
