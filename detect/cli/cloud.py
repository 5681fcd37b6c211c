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
    engine.set_cloud_metric_sources({"source": "mosquitto-log", "path": broker_log,
                                     "metrics": [*WINDOW_METRICS, metrics.DISCONNECT_DURATION]})
    log.info("cloud-side metrics from the broker log %s", broker_log)
    return LogFollower(broker_log, engine.broker_view.feed).start()


def unsourced_message(engine, profile) -> Optional[str]:
    missing = engine.unsourced_metrics(profile)
    if not missing:
        return None
    return (f"security profile {profile.name}: {', '.join(missing)} get no datapoints in this deployment "
            "(no `serve --broker-log` recorded in this database; see docs/profiles.md, cloud-side metrics)")


def sns_message(profile) -> Optional[str]:
    if "SNS" not in profile.alert_targets:
        return None
    return (f"security profile {profile.name}: alertTargets.SNS is kept but Garrison cannot publish to SNS; "
            "add \"mqtt\" or \"webhooks\" to its alertTargets (docs/profiles.md, Alerts)")


def warn_unsourced(engine, profile, to_stderr: bool = True) -> None:
    for message in (unsourced_message(engine, profile), sns_message(profile)):
        if not message:
            continue
        log.warning("%s", message)
        if to_stderr and not logging.getLogger().hasHandlers():
            print(f"warning: {message}", file=sys.stderr)
