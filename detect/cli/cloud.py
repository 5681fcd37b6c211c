"""The CLI's side of the cloud-side metrics: `serve` follows the broker's log, `profiles apply`
warns about metrics nothing computes here."""

import logging
import sys
from typing import Optional

from garrison.detect.judge import metrics

log = logging.getLogger("garrison.cli")


def start_broker_view(engine, broker_log: Optional[str]):
    """Follow `broker_log` into the engine's broker view (returns the follower to stop), and
    record in the database what this deployment computes, for `profiles apply` in other processes."""
    if not broker_log:
        engine.set_cloud_metric_sources(None)
        return None
    from garrison.detect.ingest.brokerlog import LogFollower
    from garrison.detect.judge.cloudmetrics import BrokerView, WINDOW_METRICS

    engine.broker_view = BrokerView(engine.clock.now_ms)
    engine.set_cloud_metric_sources(
        {"source": "mosquitto-log", "path": broker_log, "metrics": [*WINDOW_METRICS, metrics.DISCONNECT_DURATION]}
    )
    log.info("cloud-side metrics from the broker log %s", broker_log)
    return LogFollower(broker_log, engine.broker_view.feed).start()


def start_nats_view(engine, monitor_urls: Optional[str]):
    """Poll the NATS nodes' monitoring endpoints into the engine's broker view (returns the poller
    to stop), and record what that computes (not aws:message-byte-size) for `profiles apply`."""
    if not monitor_urls:
        engine.set_cloud_metric_sources(None)
        return None
    from garrison.detect.ingest.natsmonitor import METRICS, ConnzPoller
    from garrison.detect.judge.cloudmetrics import BrokerView

    urls = [u.strip().rstrip("/") for u in monitor_urls.split(",") if u.strip()]
    engine.broker_view = BrokerView(engine.clock.now_ms, source="nats-monitor", has_topics=False)
    engine.set_cloud_metric_sources(
        {"source": "nats-monitor", "path": ",".join(urls), "metrics": [*METRICS, metrics.DISCONNECT_DURATION]}
    )
    log.info("cloud-side metrics from the NATS monitoring endpoints %s", ",".join(urls))
    return ConnzPoller(urls, engine.broker_view.feed).start()


def unsourced_message(engine, profile) -> Optional[str]:
    missing = engine.unsourced_metrics(profile)
    if not missing:
        return None
    sources = engine.cloud_metric_sources()
    if sources and sources.get("source") == "nats-monitor":
        why = (
            "this database's `serve --nats --nats-monitor` reads NATS's /connz, which has no per-message "
            "size; see docs/profiles.md, cloud-side metrics"
        )
    else:
        why = (
            "no `serve --broker-log` or `serve --nats --nats-monitor` recorded in this database; "
            "see docs/profiles.md, cloud-side metrics"
        )
    return f"security profile {profile.name}: {', '.join(missing)} get no datapoints in this deployment ({why})"


def sns_message(profile) -> Optional[str]:
    if "SNS" not in profile.alert_targets:
        return None
    return (
        f"security profile {profile.name}: alertTargets.SNS is kept but Garrison cannot publish to SNS; "
        'add "mqtt" or "webhooks" to its alertTargets (docs/profiles.md, Alerts)'
    )


def warn_unsourced(engine, profile, to_stderr: bool = True) -> None:
    for message in (unsourced_message(engine, profile), sns_message(profile)):
        if not message:
            continue
        log.warning("%s", message)
        if to_stderr and not logging.getLogger().hasHandlers():
            print(f"warning: {message}", file=sys.stderr)
