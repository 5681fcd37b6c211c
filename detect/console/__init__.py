"""The console: the fleet, alarms, profiles, audit and metric plots in a browser, served by the
API's HTTP server under /console, and the engine's Prometheus metrics at /metrics.

`install(app, engine)` mounts both on the API's FastAPI application; `front(app, api_guard)`
puts the console's request guard (garrison.detect.console.guard) beside the API's.
Everything the pages load is in this package (templates/, static/: uPlot, our script and style).
"""

from garrison.detect.console import guard, prometheus, web
from garrison.detect.state.latest import ensure_table


def install(app, engine) -> None:
    config = getattr(engine, "config", None)
    if engine is not None:
        ensure_table(engine.store)  # outside any transaction: settled once (garrison.detect.state.latest)
    web.install(app)
    prometheus.install(
        app,
        engine,
        bool(getattr(config, "metrics_public", False)),
        web.SILENT_AFTER_S,
        lambda: web._quarantine_groups(engine),
    )


def front(app, api_guard, body_timeout: float):
    """The ASGI entry: /console/* through the console's guard, the rest through the API's."""
    return guard.ConsoleFront(app, api_guard, app.state.console_sessions, body_timeout)
