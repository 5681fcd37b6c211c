"""The detect engine: validated reports in, evaluation state, violations, alerts and actions out.

`Engine` is the `Sink` that garrison.detect.ingest.frontdoor hands accepted reports to, and the one facade the CLI
and the HTTP API use for things, groups, profiles and violations, so every path applies the
same rules. One report is one SQLite transaction: the report id is recorded, every behavior
of every profile that applies to the thing is stepped (garrison.detect.judge.evaluate), evaluation states
and violations are saved, mitigation actions run and their audit entries are written, or
nothing is (a kill -9 never half-applies a report; a redelivered report is a no-op).

Alerts leave through an outbox: events are stored with the report and handed to the alert
targets after the commit, so an engine that dies in between sends them on its next start, and
events written by another process (the CLI deleting a profile) reach the targets too.

Periodic work (`tick`): the sweep (a datapoint of `aws:disconnect-duration` for every silent
thing under a profile that has such a behavior, then the invalidation of episodes of silent
devices and of behaviors that no longer apply) and the recomputation of fleet thresholds for
statisticalThreshold behaviors. All state is keyed by thing name (see docs/detect.md on
partitioning).

`aws:disconnect-duration` is a cloud-side metric on AWS (how long the MQTT connection has been
down). The engine cannot see connections, so it measures the time since the thing's last
accepted report, in whole `disconnect_duration_unit`s (minutes by default, as AWS): a device
that stays connected but stops reporting counts as disconnected, which is what "the device went
silent" should mean. Its violations are exempt from the device-silent invalidation: silence is
what they report.
"""

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from garrison.detect import profilesync
from garrison.detect.judge import cloudmetrics, dimensions, evaluate, fleetstats, metrics, mlbridge
from garrison.detect.respond import owners, violations
from garrison.detect.respond.actions import ActionError, Actions, execute as execute_action, parse_action
from garrison.detect.respond.alerts import AlertDispatcher, AlertMessage
from garrison.detect.audit.store import AuditStore, posture_of, record_posture, record_postures
from garrison.detect.state.latest import ensure_table as ensure_latest_table
from garrison.detect.state.latest import forget as forget_latest_report, record_latest_report, record_latest_reports
from garrison.detect.clock import SystemClock
from garrison.detect.config import Config
from garrison.detect.hooks import ActionRules, AlertSink, Clock, MlJudge, ResponseRunner
from garrison.wire.names import SHAPE as NAME_SHAPE, valid_thing_name
from garrison.detect.judge.profiles import ProfileError, SecurityProfile, load_profile
from garrison.detect.state import history
from garrison.detect.state.history import MetricHistory
from garrison.detect.state.store import NotFound, Store, StoreError, parse_target
from garrison.detect.respond.violations import Event

log = logging.getLogger("garrison.engine")

# the alertTargets keys Garrison delivers to (AWS's "SNS" is kept but cannot be; see docs/profiles.md)
PROFILE_ALERT_KEYS = ("log", "mqtt", "webhooks", "webhook")

# Why an episode was invalidated (violationEventAdditionalInfo.invalidationReason).
DEVICE_SILENT = "device-silent"
THING_DELETED = "thing-deleted"
PROFILE_DELETED = "profile-deleted"
PROFILE_DETACHED = "profile-detached"
BEHAVIOR_CHANGED = "behavior-changed"
BEHAVIOR_DELETED = "behavior-deleted"

PENDING_BUILD = "PENDING_BUILD"
# ingest waits this long for another process's write lock, then retries the batch later: a long
# CLI write must not stall the ingest thread for the store's whole busy timeout
INGEST_BUSY_TIMEOUT_MS = 250
# what `serve` gives its other work (API, periodic work) on the connection it shares with ingest
SERVE_BUSY_TIMEOUT_MS = 1000


@dataclass
class _Writes:
    """Writes a batch holds back to its end, each kind written in one statement (Engine._flush)."""

    things: Dict[str, List[int]] = field(default_factory=dict)  # name -> [report id, received ms, reports]
    states: Dict[Tuple[str, str, str], Tuple[Any, int]] = field(default_factory=dict)
    samples: Dict[Tuple[str, str, str], Tuple[int, float]] = field(default_factory=dict)  # fleet statistics
    violations: Dict[str, Tuple[Any, int, Any]] = field(default_factory=dict)  # ongoing: last value
    latest: Dict[str, Tuple[int, Mapping[str, Any]]] = field(default_factory=dict)  # the console's
    postures: Dict[str, Tuple[int, Dict[str, Any]]] = field(default_factory=dict)  # the audit's
    history: List[Tuple[str, int, str, Dict[str, Any]]] = field(default_factory=list)  # metric values

    def clear(self) -> None:
        for kept in vars(self).values():
            kept.clear()

    def add(self, later: "_Writes") -> None:
        """Take `later`'s writes over these: its values win, report counts add up."""
        for name, (report_id, received_ms, reports) in later.things.items():
            self.things[name] = [report_id, received_ms, self.things.get(name, [0, 0, 0])[2] + reports]
        self.states.update(later.states)
        self.samples.update(later.samples)
        self.violations.update(later.violations)
        self.latest.update(later.latest)
        self.postures.update(later.postures)
        self.history.extend(later.history)

    def write(self, store: Store) -> None:
        """Write them all (inside the batch's transaction)."""
        if self.things:
            store.record_reports((rid, ms, n, name) for name, (rid, ms, n) in self.things.items())
        if self.states:
            store.put_states((t, p, b, state, ms) for (t, p, b), (state, ms) in self.states.items())
        if self.samples:
            store.put_samples((p, b, t, ms, v) for (p, b, t), (ms, v) in self.samples.items())
        if self.violations:
            store.update_violation_values((vid, value, ms, info) for vid, (value, ms, info) in self.violations.items())
        if self.latest:
            record_latest_reports(store, ((t, ms, report) for t, (ms, report) in self.latest.items()))
        if self.history:
            store.put_metric_values_many(self.history)
        if self.postures:
            record_postures(store, ((t, ms, posture) for t, (ms, posture) in self.postures.items()))


class Engine:
    """Evaluates reports and owns the engine's state in `store`.

    The hooks are typed in garrison.detect.hooks: clock (Clock; the wall clock by default); alerts
    (AlertSink, e.g. an AlertDispatcher) or None, in which case events stay in the outbox for the
    process that has targets (`serve`); ml (MlJudge): "auto" makes a garrison.detect.judge.mlbridge
    registry when garrison.detect.judge.ml is available, None disables it (ML behaviors then stay
    PENDING_BUILD with no verdict); actions (ActionRules): the config's [actions] rules by default;
    runner (ResponseRunner, set by `serve`): woken when a report caused events.
    """

    def __init__(
        self,
        store: Store,
        clock: Optional[Clock] = None,
        config: Optional[Config] = None,
        alerts: Optional[AlertSink] = None,
        ml: Union[MlJudge, str, None] = "auto",
        actions: Optional[ActionRules] = None,
    ):
        self.store = store
        self.clock = clock or SystemClock()
        self.config = config or Config()
        self.actions: ActionRules = actions or Actions(self.config.actions, dry_run=self.config.dry_run)
        self.alerts: Optional[AlertSink] = alerts
        self.runner: Optional[ResponseRunner] = None  # carries out pending actions (respond.runner.ActionRunner)
        self.ml: Optional[MlJudge] = mlbridge.registry(store, self.config.ml) if ml == "auto" else ml  # type: ignore[assignment]
        self._profiles: Dict[str, Tuple[str, SecurityProfile]] = {}
        # group commit (batch()): what reports read again and again. Profiles and attachments are
        # kept across batches while nobody else writes (store.change_marker, see _hot_valid);
        # what is per thing only for one batch, so memory does not grow with the fleet
        self._batch_thread: Optional[int] = None  # the thread inside batch(); others bypass the caches
        self._batch_had_events = False
        self._hot_marker: object = None  # Store.change_marker(); compared, never read
        self._hot_last: Dict[str, Optional[Tuple[Optional[int], Optional[int]]]] = {}
        self._hot_targets: Optional[Dict[str, List[str]]] = None  # attachment target -> profiles
        self._hot_states: Dict[str, Dict[Tuple[str, str], Any]] = {}
        self._hot_parsed: Dict[str, Optional[SecurityProfile]] = {}
        self._hot_first: Dict[str, Optional[int]] = {}
        self._hot_open: Dict[Tuple[str, str, str], Optional[str]] = {}  # open violation ids
        self._hot_fetched: set = set()  # things whose open violations are all in _hot_open (prefetch)
        self._hot_groups: Dict[str, List[str]] = {}
        self._hot_thresholds: Optional[Dict[Tuple[str, str], Dict[str, Any]]] = None  # fleet statistics
        # writes of a batch held back to its end (one executemany each): the report being
        # accepted stages them, and they join `pending` once it succeeded
        self._staged = _Writes()
        self._pending = _Writes()
        # what _flush wrote inside the savepoint of the report in hand (earlier reports' writes):
        # written again if that report fails, since its rollback undoes them
        self._unit_flushed: Optional[List[_Writes]] = None
        self._dispatch_lock = threading.RLock()  # before the store's lock, never after
        self._alerts_in_flight: set = set()  # outbox seqs handed to the targets, outcome not known yet
        # what the broker saw (garrison.detect.judge.cloudmetrics.BrokerView), set by `serve` when
        # it follows a broker log; None: the cloud-side metrics other than disconnect-duration
        # have no source
        self.broker_view: Any = None
        # metric history (ListMetricValues) and its export; `metric_exporter(topic, payload)` is set
        # by `serve` (the engine's MQTT connection)
        self.history = MetricHistory(store, self.config.metric_retention_s)
        self.metric_exporter: Any = None
        # builds a profile's own alert targets from its alertTargets (set by `serve`: they publish
        # on its MQTT connection); None: only the engine-wide `alerts`
        self.alert_target_builder: Any = None
        self._profile_alerts: Dict[str, Tuple[str, Any]] = {}  # profile -> (its alertTargets, their dispatcher)
        self._in_flight_lock = threading.Lock()
        # the first sweep waits one interval: after downtime, reports the broker kept for us arrive
        # first, so devices that did report are not taken for silent ones
        self._due = {
            "sweep": time.monotonic() + self.config.sweep_interval_s,
            "fleet": 0.0,
            "cloud": time.monotonic() + self.config.cloud_metrics_interval_s,
        }
        for group in self.actions.groups():  # a quarantine group exists before it is needed
            store.create_group(group, self.clock.now_ms())
        # the tables the report hooks write, settled here outside any report's transaction
        AuditStore(store)
        ensure_latest_table(store)

    # ---- the Sink garrison.detect.ingest.frontdoor calls ---------------------------------------------------------

    def last_report(self, thing: str) -> Optional[Tuple[int, int]]:
        last = self._last_of(thing)
        if last is None or last[0] is None or last[1] is None:
            return None
        return last[0], last[1]

    def is_registered(self, thing: str) -> bool:
        return self._last_of(thing) is not None

    def first_seen(self, thing: str) -> Optional[int]:
        """When the thing was registered (epoch ms), None if unknown: reports dated earlier are refused."""
        if not self._batching:
            return self.store.first_seen(thing)
        if thing not in self._hot_first:
            self._hot_first[thing] = self.store.first_seen(thing)
        return self._hot_first[thing]

    def prefetch(self, things: List[str]) -> None:
        """In a batch: read what its reports will read of these things (their rows, states, open
        violations, groups) now, in a few queries, instead of a few per report: on PostgreSQL
        each is a round trip, these are one (Store.read_things)."""
        if not self._batching:
            return
        names = [t for t in dict.fromkeys(things) if t not in self._hot_last]
        if not names:
            return
        if self._hot_targets is None:
            self._hot_targets = self.store.attachments_by_target()
        rows = self.store.read_things(
            names,
            groups=any(t.startswith("group:") for t in self._hot_targets),
            thresholds=self._hot_thresholds is None,
        )
        if rows.thresholds is not None:
            self._hot_thresholds = rows.thresholds
        for name in names:
            self._hot_last[name] = rows.last.get(name)
            if name in rows.registered:
                self._hot_first[name] = rows.registered[name]
            self._hot_states[name] = rows.states[name]
            for (profile, behavior), violation_id in rows.open[name].items():
                self._hot_open[(name, profile, behavior)] = violation_id
            self._hot_fetched.add(name)
            if rows.groups is not None:
                self._hot_groups[name] = rows.groups[name]

    @contextmanager
    def batch(self, busy_timeout_ms: int = INGEST_BUSY_TIMEOUT_MS):
        """Group commit: the reports accepted inside are one transaction, each in a savepoint (one
        that raises is undone alone). Alerts go after the commit. Raises StoreBusy (nothing
        written) when another process holds the write lock past `busy_timeout_ms`."""
        self._batch_had_events = False
        try:
            with self.store.transaction(busy_timeout_ms):
                self._batch_thread = threading.get_ident()
                self._hot_valid()
                yield self
                self._flush()
                self._hot_marker = self.store.change_marker()
                # per batch: kept from batch to batch (2,000 things) they saved 4% of the CPU
                # for 7 KB of states per thing (docs/bench-burst.md)
                self._forget_things()
        except BaseException:
            self._pending.clear()
            self._hot_drop()
            raise
        finally:
            self._batch_thread = None
        try:
            # only a batch that raised events looks at the outbox (one transaction more); tick()
            # (every half second in serve) takes what else is there: retries, other processes' events
            if self.alerts is not None and self._batch_had_events:  # locks in tick()'s order
                with self._dispatch_lock, self.store.transaction(busy_timeout_ms):
                    self.dispatch_alerts()
        except Exception as exc:  # committed all the same; the outbox keeps them for the next tick
            log.warning("alerts wait in the outbox: %s", exc)
        if self._batch_had_events and self.runner is not None:
            self.runner.wake()

    @property
    def _batching(self) -> bool:
        return self._batch_thread == threading.get_ident()

    def accept(self, thing: str, report_long: Mapping[str, Any], received_ms: int) -> List[Event]:
        """Record and evaluate one validated report atomically; returns the events it caused."""
        if self._batching:
            self._staged.clear()
            self._unit_flushed = []
            try:
                with self.store.savepoint():
                    events = self._accept(thing, report_long, received_ms)
            except BaseException:
                self._staged.clear()
                self._restore_unit_flushed()
                self._flush()  # what earlier reports of the batch hold back stays theirs
                self._hot_drop()  # the cache may hold what was just undone
                raise
            finally:
                self._unit_flushed = None
            self._pending.add(self._staged)
            if events:
                self._batch_had_events = True
                if self.actions.rules:  # actions may have moved the thing (quarantine): read afresh
                    self._flush()
                    self._hot_drop()
            return events
        with self.store.transaction():
            events = self._accept(thing, report_long, received_ms)
        self.dispatch_alerts()
        if events and self.runner is not None:
            self.runner.wake()
        return events

    def _accept(self, thing: str, report_long: Mapping[str, Any], received_ms: int) -> List[Event]:
        report_id = report_long["header"]["report_id"]
        last = self._last_of(thing)
        if last is None:
            self.store.register_thing(thing, received_ms)
            log.info("registered thing %s on its first report", thing)
        elif last[0] is not None and report_id <= last[0]:
            return []  # already applied (QoS 1 redelivery) or older: never apply twice
        if self._batching:
            self._staged.things[thing] = [report_id, received_ms, 1]
            self._hot_last[thing] = (report_id, received_ms)
        else:
            self.store.record_report(thing, report_id, received_ms)
        if not self._batching:  # a batch writes them at its end (_flush)
            record_posture(self.store, thing, report_long, received_ms)  # for DEVICE_HARDENING_CHECK
            record_latest_report(self.store, thing, report_long, received_ms)  # the console's thing page
        return self._evaluate(thing, report_long, received_ms)

    # ---- what a batch caches --------------------------------------------------------------------

    def _hot_valid(self) -> None:
        """Keep the batch caches only if nobody wrote since the last batch committed: another
        process (the CLI: PRAGMA data_version) or another thread of this one (the API, the sweep:
        the connection's change count); on PostgreSQL, a digest of the profiles and attachments."""
        if self.store.change_marker() != self._hot_marker:
            self._hot_drop()

    def _flush(self) -> None:
        """Write what the batch held back (inside its transaction)."""
        writes, self._pending = self._pending, _Writes()
        if self._unit_flushed is not None:  # inside a report's savepoint
            self._unit_flushed.append(writes)
        writes.write(self.store)

    def _restore_unit_flushed(self) -> None:
        """The report in hand failed and its savepoint's rollback undid what _flush wrote meanwhile
        for the batch's earlier reports (answered, so not to be lost): held back again."""
        flushed, self._unit_flushed = self._unit_flushed or [], None
        for writes in flushed:
            self._pending.add(writes)

    def _hot_drop(self) -> None:
        self._hot_marker = None
        self._hot_targets = None
        self._hot_parsed.clear()
        self._forget_things()

    def _forget_things(self) -> None:
        self._hot_last.clear()
        self._hot_states.clear()
        self._hot_first.clear()
        self._hot_open.clear()
        self._hot_fetched.clear()
        self._hot_groups.clear()
        self._hot_thresholds = None

    def _profiles_for(self, thing: str) -> List[str]:
        """store.profiles_for_thing from the cached attachments (groups read only when a group
        has a profile attached)."""
        targets = self._hot_targets
        if targets is None:
            targets = self._hot_targets = self.store.attachments_by_target()
        names = set(targets.get("all", ())).union(targets.get(f"thing:{thing}", ()))
        if any(target.startswith("group:") for target in targets):
            groups = self._hot_groups.get(thing)
            for group in self.store.groups_of(thing) if groups is None else groups:
                names.update(targets.get(f"group:{group}", ()))
        return sorted(names)

    def _last_of(self, thing: str) -> Optional[Tuple[Optional[int], Optional[int]]]:
        if not self._batching:
            return self.store.last_report(thing)
        if thing not in self._hot_last:
            self._hot_last[thing] = self.store.last_report(thing)
        return self._hot_last[thing]

    def _evaluate(self, thing: str, report: Mapping[str, Any], received_ms: int) -> List[Event]:
        events = []
        if self._batching:
            states = self._hot_states.get(thing)
            if states is None:
                states = self._hot_states[thing] = self.store.states_of_thing(thing)
            names = self._profiles_for(thing)
        else:
            states = self.store.states_of_thing(thing)
            names = self.store.profiles_for_thing(thing)
        applied = []
        extracted: Dict[Any, Any] = {}  # (metric, spec) -> value: behaviors and history share one extraction
        for name in names:
            profile = self._profile(name)
            if profile is None:
                continue
            applied.append(profile)
            for behavior in profile.behaviors:
                state = states.get((name, behavior.name))
                event = self._step(thing, name, behavior, report, received_ms, state, extracted)
                if event is not None:
                    events.append(event)
                    self.actions.run(self.store, event, received_ms)
        if self._batching:  # written with the batch's (Engine._flush), as is the latest report
            values = self.history.report_values(thing, applied, report, received_ms, extracted)
            staged = self._staged
            staged.latest[thing] = (received_ms, report)
            posture = posture_of(report)
            if posture:
                staged.postures[thing] = (received_ms, posture)
            if values:
                staged.history.append((thing, received_ms, "report", values))
        else:
            self.history.record_report(thing, applied, report, received_ms, extracted)
        return events

    def _step(
        self,
        thing: str,
        profile: str,
        behavior,
        report: Mapping[str, Any],
        received_ms: int,
        state: Optional[Dict[str, Any]],
        extracted: Dict[Any, Any],
    ) -> Optional[Event]:
        if behavior.kind == "retain":
            return None
        value = history.extract_once(extracted, report, behavior.metric, behavior.spec)
        if value is None:
            return None
        if behavior.metric in metrics.SILENCE_METRICS:
            # the sweep measures silence from the report's arrival: a spooled backlog dated in the
            # past still shows the device is connected now
            state = dict(state or {}, seen_ms=max(received_ms, self.clock.now_ms()))
        context = (
            owners.note(behavior, report, value)
            if behavior.metric in owners.PORT_METRICS or behavior.metric == owners.DESTINATIONS
            else None
        )
        return self._judge(thing, profile, behavior, value, received_ms, state, context)

    def _judge(
        self,
        thing: str,
        profile: str,
        behavior,
        value: Any,
        received_ms: int,
        state: Optional[Dict[str, Any]],
        context: Optional[Dict[str, Any]] = None,
    ) -> Optional[Event]:
        """Step one datapoint of `behavior` and record what it does to the thing's violation.
        `context`: more violationEventAdditionalInfo (the processes behind the offending ports or
        connections, garrison.detect.respond.owners)."""
        threshold = verdict = judgement = None
        if behavior.kind == "statistical":
            if not self._batching:
                known = self.store.get_threshold(profile, behavior.name)
            else:  # the periodic work recomputes them: all read once per batch
                if self._hot_thresholds is None:
                    self._hot_thresholds = self.store.thresholds()
                known = self._hot_thresholds.get((profile, behavior.name))
            threshold = known["value"] if known else None
        elif behavior.kind == "ml" and self.ml is not None:
            judgement = self.ml.judge(thing, profile, behavior, value, received_ms)
            verdict = judgement["anomalous"] if judgement else None
        outcome = evaluate.step(behavior, state, value, received_ms, threshold=threshold, verdict=verdict)
        # a steady state is not written back (the disconnect sweep's seen_ms always is)
        if outcome.state != state or behavior.metric == metrics.DISCONNECT_DURATION:
            if self._batching:
                self._staged.states[(thing, profile, behavior.name)] = (outcome.state, received_ms)
                if thing in self._hot_states:
                    self._hot_states[thing][(profile, behavior.name)] = outcome.state
            else:
                self.store.put_state(thing, profile, behavior.name, outcome.state, received_ms)
        if behavior.kind == "statistical" and isinstance(outcome.value, (int, float)):
            if self._batching:
                self._staged.samples[(profile, behavior.name, thing)] = (received_ms, outcome.value)
            else:
                self.store.put_sample(profile, behavior.name, thing, received_ms, outcome.value)
        if outcome.violating is None:
            return None
        info = self._additional_info(behavior, outcome, judgement)
        if context and outcome.violating:
            info.update(context)
        if self._batching:
            key = (thing, profile, behavior.name)
            if outcome.transition is None:
                if not outcome.violating:
                    return None  # conforming, clears nothing: no violation changes
                # a violation that goes on: its last value is held back to the batch's end
                if key not in self._hot_open:
                    row = (
                        None if thing in self._hot_fetched else self.store.open_violation(thing, profile, behavior.name)
                    )
                    self._hot_open[key] = row["violation_id"] if row is not None else None
                violation_id = self._hot_open[key]
                if violation_id is not None:
                    self._staged.violations[violation_id] = (
                        evaluate.violation_value(behavior.spec, outcome.value),
                        received_ms,
                        info,
                    )
                return None
            self._hot_open.pop(key, None)
            self._hot_fetched.discard(thing)  # its episodes change: read them again
            self._flush()  # an episode starts or ends: what is held back for it goes first
        return violations.record_datapoint(
            self.store,
            thing,
            profile,
            behavior.doc,
            transition=outcome.transition,
            violating=outcome.violating,
            metric_value=evaluate.violation_value(behavior.spec, outcome.value),
            time_ms=received_ms,
            additional_info=info,
        )

    @staticmethod
    def _additional_info(behavior, outcome, judgement: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """AWS's violationEventAdditionalInfo, plus the threshold a statistical behavior used and
        an ML model's whole judgement (metric, value, band low / high, expected, basis, modelStatus,
        explanation: garrison.detect.judge.mlbridge.additional_info)."""
        info: Dict[str, Any] = {}
        if behavior.kind == "statistical":
            info["statisticalThreshold"] = {"statistic": behavior.statistic}
            info["thresholdValue"] = outcome.detail.get("threshold")
        if behavior.kind == "ml":
            info["confidenceLevel"] = behavior.confidence_level
            info.update(judgement or {})
        return info

    def _profile(self, name: str) -> Optional[SecurityProfile]:
        """The parsed profile, re-read when another process changed it (in a batch: once per
        batch unless somebody wrote, see _hot_valid)."""
        if self._batching:
            if name not in self._hot_parsed:
                self._hot_parsed[name] = self._profile_from_store(name)
            return self._hot_parsed[name]
        return self._profile_from_store(name)

    def _profile_from_store(self, name: str) -> Optional[SecurityProfile]:
        text = self.store.get_profile_text(name)
        if text is None:
            self._profiles.pop(name, None)
            return None
        cached = self._profiles.get(name)
        if cached is None or cached[0] != text:
            try:
                cached = (text, load_profile(json.loads(text)))
            except ProfileError as exc:  # stored by an older version with other rules: skip it, loudly
                log.error("stored security profile %s no longer loads: %s", name, exc)
                return None
            self._profiles[name] = cached
        return cached[1]

    # ---- alerts -------------------------------------------------------------------------------

    def dispatch_alerts(self) -> int:
        """Hand events still in the outbox to the alert targets; returns how many.

        With targets that report outcomes (garrison.detect.respond.alerts.AlertDispatcher), an event leaves the
        outbox only when its alert was delivered or finally failed (kept in alert_failures);
        targets get no more than they have room for, so nothing is dropped, and what is still
        pending when the engine stops is sent after its restart."""
        if self.alerts is None:
            return 0
        sent = 0
        with self._dispatch_lock:
            for row in self.store.pending_alerts():
                with self._in_flight_lock:
                    if row["seq"] in self._alerts_in_flight:
                        continue
                targets = self._alert_targets_for(row["profile"])
                tracked = getattr(targets, "tracks_delivery", False)
                if tracked and not targets.has_room():
                    break  # the rest waits in the outbox for the next tick
                event = Event.from_row(row)
                info = event.additional_info or {}
                message = AlertMessage(
                    event.thing,
                    event.profile,
                    event.behavior,
                    event.metric_value,
                    event.violation_id,
                    event.event_type,
                    event.time_ms,
                    threshold=info.get("thresholdValue"),
                    confidenceLevel=info.get("confidenceLevel"),
                    invalidationReason=info.get("invalidationReason"),
                    explanation=info.get("explanation"),
                    violationEventAdditionalInfo=info or None,
                )
                if tracked:
                    with self._in_flight_lock:
                        self._alerts_in_flight.add(event.seq)
                    targets.deliver(message, done=self._alert_outcome_recorder(event.seq))
                else:  # a plain deliver(message): handing it over is all there is
                    targets.deliver(message)
                    self.store.mark_alerted(event.seq, self.clock.now_ms())
                sent += 1
        return sent

    def _alert_targets_for(self, profile_name: str):
        """The engine-wide targets, plus the profile's own `alertTargets` (its mqtt / webhooks /
        log entries, garrison.detect.respond.alerts syntax) when `alert_target_builder` can build
        them: one dispatcher fanning out to both, cached per profile version."""
        builder = self.alert_target_builder
        profile = self._profile(profile_name) if builder is not None else None
        own = {k: v for k, v in (profile.alert_targets if profile else {}).items() if k in PROFILE_ALERT_KEYS}
        if not own:
            return self.alerts
        key = json.dumps(own, sort_keys=True, default=str)
        cached = self._profile_alerts.get(profile_name)
        if cached is None or cached[0] != key:
            if cached is not None:
                cached[1].targets[-1].close(1.0)
            try:
                dispatcher = AlertDispatcher([self.alerts, builder(dict({"log": False}, **own))])
            except Exception as exc:
                log.error(
                    "alertTargets of security profile %s cannot be used (%s); engine-wide targets only",
                    profile_name,
                    exc,
                )
                return self.alerts
            cached = self._profile_alerts[profile_name] = (key, dispatcher)
        return cached[1]

    def _alert_outcome_recorder(self, seq: int):
        def done(outcome: str, detail: str) -> None:  # called on an alert worker's thread
            try:
                if outcome == "delivered":
                    self.store.mark_alerted(seq, self.clock.now_ms())
                elif outcome == "failed":
                    self.store.mark_alerted(seq, self.clock.now_ms(), failure=detail or "failed")
                    log.error("alert for event %d given up: %s", seq, detail)
                # "dropped": not sent; it stays in the outbox and is handed over again
            except Exception:
                log.exception("could not record the outcome of alert %d; it will be sent again", seq)
            finally:
                with self._in_flight_lock:
                    self._alerts_in_flight.discard(seq)

        return done

    # ---- periodic work ------------------------------------------------------------------------

    def tick(self) -> None:
        """Run what is due: the sweep, the fleet statistics, the outbox. Call it every second or so."""
        now = time.monotonic()
        if now >= self._due["fleet"]:
            self._due["fleet"] = now + self.config.fleet_stats_interval_s
            self.recompute_fleet_stats()
        if now >= self._due["sweep"]:
            self._due["sweep"] = now + self.config.sweep_interval_s
            self.sweep()
        if self.broker_view is not None and now >= self._due["cloud"]:
            self._due["cloud"] = now + self.config.cloud_metrics_interval_s
            self.evaluate_cloud_metrics()
        self.dispatch_alerts()
        if self.runner is not None:
            self.runner.wake()
        self.history.flush_exports(self.metric_exporter)

    def sweep(self, now_ms: Optional[int] = None) -> List[Event]:
        """Measure the disconnect duration of silent things, then invalidate episodes of silent
        devices and of behaviors that no longer apply."""
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        events = self._measure_disconnects(now_ms)
        silent_before_ms = now_ms - int(self.config.invalidation_period_s * 1000)
        events += self._invalidate_stale(now_ms, silent_before_ms=silent_before_ms)
        pruned = self.history.prune(now_ms)
        if pruned:
            log.info(
                "metric history: %d datapoints past the %gs retention dropped", pruned, self.config.metric_retention_s
            )
        self.dispatch_alerts()
        return events

    def _measure_disconnects(self, now_ms: int) -> List[Event]:
        """One datapoint per thing under each profile with an aws:disconnect-duration or
        garrison:report-silence behavior, in whole units: for report silence, since the thing's
        last accepted report; for disconnect-duration, since its connection ended (0 while
        connected) when the broker view knows the thing, else as report silence (things that
        neither reported nor were seen have none)."""
        events = []
        unit_ms = self.config.disconnect_duration_unit_s * 1000
        with self.store.transaction():
            last_seen = None
            for name in [p["securityProfileName"] for p in self.store.list_profiles()]:
                profile = self._profile(name)
                behaviors = [
                    b
                    for b in (profile.behaviors if profile else ())
                    if b.metric in metrics.SILENCE_METRICS and b.kind == "rule"
                ]
                if not behaviors:
                    continue
                if last_seen is None:
                    last_seen = self.store.last_received_times()
                view = self.broker_view
                under = self.store.things_under_profile(name)
                for behavior in behaviors:
                    states = self.store.states_of_behavior(name, behavior.name)
                    for thing in under:
                        state = states.get(thing)
                        connection = (
                            view.connection(thing)
                            if view is not None and behavior.metric == metrics.DISCONNECT_DURATION
                            else None
                        )
                        if connection is not None:
                            connected, since = connection
                            value = 0 if connected else max(0, int((now_ms - since) // unit_ms))
                        elif thing in last_seen:
                            since = max(last_seen[thing], (state or {}).get("seen_ms", 0))
                            value = max(0, int((now_ms - since) // unit_ms))
                        else:
                            continue
                        if _changes_nothing(behavior, state, value):
                            continue
                        event = self._judge(thing, name, behavior, value, now_ms, state)
                        if event is not None:
                            events.append(event)
                            self.actions.run(self.store, event, now_ms)
        return events

    def evaluate_cloud_metrics(self, now_ms: Optional[int] = None) -> List[Event]:
        """One datapoint per thing under each profile with a behavior on a metric the broker view
        computes (garrison.detect.judge.cloudmetrics), over the behavior's durationSeconds."""
        view = self.broker_view
        if view is None:
            return []
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        events = []
        recorded: set = set()
        with self.store.transaction():
            for name in [p["securityProfileName"] for p in self.store.list_profiles()]:
                profile = self._profile(name)
                behaviors = [
                    b
                    for b in (profile.behaviors if profile else ())
                    if b.metric in cloudmetrics.WINDOW_METRICS and b.kind in ("rule", "statistical")
                ]
                if not behaviors:
                    continue
                under = self.store.things_under_profile(name)
                exports = history.retained(profile)
                for behavior in behaviors:
                    states = self.store.states_of_behavior(name, behavior.name)
                    matches = self._dimension_matcher(behavior)
                    for thing in under:
                        value = view.value(thing, behavior.metric, behavior.duration_seconds, now_ms, matches)
                        if value is None:
                            continue
                        dimension = behavior.metric_dimension or {}
                        key = (thing, behavior.metric, dimension.get("dimensionName"), dimension.get("operator", "IN"))
                        if key not in recorded:
                            recorded.add(key)
                            recorded_value = evaluate.violation_value(behavior.spec, value)  # not None: value is not
                            self.history.record(
                                thing,
                                behavior.metric,
                                recorded_value or {},
                                now_ms,
                                exports[behavior.metric][1],
                                behavior.metric_dimension,
                            )
                        state = states.get(thing)
                        if behavior.kind == "rule" and _changes_nothing(behavior, state, value):
                            continue
                        event = self._judge(thing, name, behavior, value, now_ms, state)
                        if event is not None:
                            events.append(event)
                            self.actions.run(self.store, event, now_ms)
            self.history.flush()
        self.dispatch_alerts()
        return events

    def list_metric_values(
        self,
        thing: str,
        metric: str,
        start_s: Optional[float] = None,
        end_s: Optional[float] = None,
        dimension_name: Optional[str] = None,
        dimension_operator: Optional[str] = None,
        max_results: Optional[int] = None,
        next_token: Optional[str] = None,
    ) -> Dict[str, Any]:
        """ListMetricValues over the metric history (garrison.detect.state.history)."""
        if self.store.last_report(thing) is None:
            raise NotFound(f"no thing named {thing!r}")
        try:
            return self.history.list_values(
                thing, metric, start_s, end_s, dimension_name, dimension_operator, max_results, next_token
            )
        except history.HistoryError as exc:
            raise StoreError(str(exc)) from None

    def _dimension_matcher(self, behavior):
        """A topic predicate for a behavior's metricDimension (None: every topic). A dimension
        deleted meanwhile matches nothing (IN) or everything (NOT_IN)."""
        if not behavior.metric_dimension:
            return None
        found = self.store.get_dimension(behavior.metric_dimension["dimensionName"])
        return dimensions.matcher(found["values"] if found else (), behavior.metric_dimension.get("operator", "IN"))

    # ---- dimensions (CreateDimension, ...) -----------------------------------------------------

    def create_dimension(self, name: str, dimension_type: str, values: Any) -> Dict[str, Any]:
        values = self._checked_dimension(name, dimension_type, values)
        if not self.store.put_dimension(name, dimension_type, values, self.clock.now_ms()):
            raise StoreError(f"dimension {name!r} already exists (update it instead)")
        return {"name": name}

    def update_dimension(self, name: str, values: Any) -> Dict[str, Any]:
        values = self._checked_dimension(name, "TOPIC_FILTER", values)
        if not self.store.put_dimension(name, "TOPIC_FILTER", values, self.clock.now_ms(), create=False):
            raise NotFound(f"no dimension named {name!r}")
        return self.describe_dimension(name)

    def list_dimensions(self) -> Dict[str, Any]:
        return {"dimensionNames": self.store.list_dimensions()}

    def describe_dimension(self, name: str) -> Dict[str, Any]:
        found = self.store.get_dimension(name)
        if found is None:
            raise NotFound(f"no dimension named {name!r}")
        return dimensions.record(found)

    def delete_dimension(self, name: str) -> None:
        """Refused while a profile's behavior uses it (as AWS)."""
        with self.store.transaction():
            users = sorted(
                {
                    p["securityProfileName"]
                    for p in self.store.list_profiles()
                    for b in p["doc"].get("behaviors", [])
                    if isinstance(b, dict) and (b.get("metricDimension") or {}).get("dimensionName") == name
                }
            )
            if users:
                raise StoreError(f"dimension {name!r} is used by security profile(s) {', '.join(users)}")
            if not self.store.delete_dimension(name):
                raise NotFound(f"no dimension named {name!r}")

    @staticmethod
    def _checked_dimension(name, dimension_type, values):
        try:
            return dimensions.check(name, dimension_type, values)
        except dimensions.DimensionError as exc:
            raise StoreError(str(exc)) from None

    def unsourced_metrics(self, profile: SecurityProfile) -> List[str]:
        """The metrics of `profile` that get no datapoint in this deployment: the broker's
        metrics while no `serve` follows a broker log (recorded in the database at its start)."""
        sources = self.cloud_metric_sources()
        computed = set(sources.get("metrics", ())) if sources else set()
        names = [b.metric for b in profile.behaviors] + [m.get("metric") for m in profile.additional_metrics]
        return sorted({m for m in names if m in metrics.BROKER_METRICS and m not in computed})

    def cloud_metric_sources(self) -> Optional[Dict[str, Any]]:
        """What `serve` computes the cloud-side metrics from ({"source", "path", "metrics"}), or None."""
        text = self.store.get_meta("cloud_metric_sources")
        return json.loads(text) if text else None

    def set_cloud_metric_sources(self, sources: Optional[Dict[str, Any]]) -> None:
        self.store.put_meta("cloud_metric_sources", json.dumps(sources) if sources else None)

    def _invalidate_stale(self, now_ms: int, silent_before_ms: Optional[int] = None) -> List[Event]:
        events = []
        applies: Dict[str, List[str]] = {}
        with self.store.transaction():
            for row in self.store.list_violations(active_only=True):
                thing = row["thing"]
                if thing not in applies:
                    applies[thing] = self.store.profiles_for_thing(thing)
                reason = self._stale_reason(row, applies[thing], silent_before_ms)
                if reason:
                    event = violations.invalidate(self.store, row, now_ms, reason)
                    if event is not None:
                        log.info(
                            "violation %s of %s (%s/%s) invalidated: %s",
                            event.violation_id,
                            thing,
                            event.profile,
                            row["behavior_name"],
                            reason,
                        )
                        events.append(event)
                        self.actions.run(self.store, event, now_ms)
        return events

    def _stale_reason(self, row, applicable: List[str], silent_before_ms: Optional[int]) -> Optional[str]:
        if row["thing"] == mlbridge.FLEET_THING:
            return None  # an ML fleet notice: its detector clears it
        last = self.store.last_report(row["thing"])
        if last is None:
            return THING_DELETED
        if (
            silent_before_ms is not None
            and (last[1] or 0) < silent_before_ms
            and json.loads(row["behavior"]).get("metric") not in metrics.CLOUD_METRICS
        ):
            # a disconnect-duration violation is about that very silence; the broker's metrics
            # are measured without reports (a device that stops reporting may still misbehave)
            return DEVICE_SILENT
        profile = self._profile(row["profile"])
        if profile is None:
            return PROFILE_DELETED
        if row["profile"] not in applicable:
            return PROFILE_DETACHED
        try:
            behavior = profile.behavior(row["behavior_name"])
        except KeyError:
            return BEHAVIOR_DELETED
        if behavior.to_dict() != json.loads(row["behavior"]):
            return BEHAVIOR_CHANGED
        return None

    def recompute_fleet_stats(self, now_ms: Optional[int] = None) -> Dict[Tuple[str, str], Optional[float]]:
        """Recompute every statistical threshold from each device's latest value in the window
        (and rebuild ML fleet priors when their retrain period has passed)."""
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        thresholds = {}
        with self.store.transaction():
            for name in [p["securityProfileName"] for p in self.store.list_profiles()]:
                profile = self._profile(name)
                behaviors = profile.behaviors if profile else ()
                if self.ml is not None:
                    self.ml.rebuild_priors([(name, b.name) for b in behaviors if b.kind == "ml"], now_ms)
                statistical = [b for b in behaviors if b.kind == "statistical"]
                if not statistical:
                    continue
                members = set(self.store.things_under_profile(name))
                for behavior in statistical:
                    window_ms = (behavior.duration_seconds or fleetstats.DEFAULT_DURATION_SECONDS) * 1000
                    values = [
                        value
                        for thing, _, value in self.store.samples(name, behavior.name, now_ms - window_ms)
                        if thing in members
                    ]
                    value = (
                        fleetstats.percentile(values, behavior.statistic or "")
                        if len(values) >= self.config.fleet_min_devices
                        else None
                    )
                    self.store.put_threshold(name, behavior.name, value, len(values), now_ms)
                    thresholds[(name, behavior.name)] = value
        return thresholds

    # ---- profiles -----------------------------------------------------------------------------

    def apply_profile(self, source: Any, attach: Optional[str] = None) -> Tuple[SecurityProfile, bool]:
        """Create or replace a profile (AWS CreateSecurityProfile JSON), optionally attaching it.

        Behaviors that changed or went away lose their evaluation state and statistics, and their
        open violations are invalidated. Returns (profile, created).
        """
        profile = load_profile(source)
        for behavior in profile.behaviors:  # as AWS: a metricDimension names an existing dimension
            wanted = (behavior.metric_dimension or {}).get("dimensionName")
            if wanted and self.store.get_dimension(wanted) is None:
                raise ProfileError(
                    f"no dimension named {wanted!r} (garrison-detect dimensions create)",
                    behavior.name,
                    "metricDimension.dimensionName",
                )
        if attach:
            _check_target(attach)
        now = self.clock.now_ms()
        with self.store.transaction():
            old = self.store.get_profile(profile.name)
            created = self.store.put_profile(profile.name, profile.to_dict(), now)
            if old is not None:
                new_behaviors = {b.name: b.to_dict() for b in profile.behaviors}
                for behavior in old.get("behaviors", []):
                    if new_behaviors.get(behavior.get("name")) != behavior:
                        self.store.forget_behavior(profile.name, behavior.get("name"))
            if attach:
                self.store.attach(profile.name, attach)
            self._invalidate_stale(now)
        self.dispatch_alerts()
        return profile, created

    def sync_profiles(self, wanted, prune: bool = False, dry_run: bool = False, detach: bool = True):
        """Make the profiles and their attachments match `wanted` [(document, targets)]; returns
        the plan (garrison.detect.profilesync.Step list), applied unless `dry_run`."""
        for doc, _ in wanted:
            load_profile(doc)  # every document valid before anything is planned
        steps = profilesync.plan(self, wanted, prune=prune, detach=detach)
        if steps and not dry_run:
            profilesync.apply(self, wanted, steps)
        return steps

    def validate_behaviors(self, behaviors: Any) -> Dict[str, Any]:
        """ValidateSecurityProfileBehaviors (nothing is stored)."""
        return profilesync.validate_behaviors(behaviors)

    def profiles_for_target(self, target: str, recursive: bool = False) -> Dict[str, Any]:
        """ListSecurityProfilesForTarget."""
        return profilesync.profiles_for_target(self, target, recursive)

    def delete_profile(self, name: str) -> None:
        now = self.clock.now_ms()
        with self.store.transaction():
            if not self.store.delete_profile(name):
                raise NotFound(f"no security profile named {name!r}")
            self._invalidate_stale(now)
        self.dispatch_alerts()

    def list_profiles(self) -> List[Dict[str, Any]]:
        """Each profile's name, behavior names and targets."""
        return [
            {
                "securityProfileName": p["securityProfileName"],
                "behaviors": [b.get("name") for b in p["doc"].get("behaviors", [])],
                "targets": p["targets"],
            }
            for p in self.store.list_profiles()
        ]

    def describe_profile(self, name: str) -> Dict[str, Any]:
        """The profile document plus targets and, per statistical / ML behavior, its status."""
        doc = self.store.get_profile(name)
        if doc is None:
            raise NotFound(f"no security profile named {name!r}")
        out: Dict[str, Any] = {"securityProfileName": name, "profile": doc, "targets": self.store.attachments_of(name)}
        profile = self._profile(name)
        for behavior in profile.behaviors if profile else ():
            if behavior.kind == "statistical":
                known = self.store.get_threshold(name, behavior.name)
                out.setdefault("statisticalThresholds", {})[behavior.name] = {
                    "statistic": behavior.statistic,
                    "value": known and known["value"],
                    "devices": known["devices"] if known else 0,
                    "computedTime": known["computed_ms"] / 1000.0 if known else None,
                }
            elif behavior.kind == "ml":
                status = (
                    self.ml.status(name, behavior.name, self.clock.now_ms()) if self.ml is not None else PENDING_BUILD
                )
                out.setdefault("behaviorModelTrainingSummaries", []).append(
                    {"behaviorName": behavior.name, "modelStatus": status}
                )
        return out

    def ml_training_summaries(
        self, profile: Optional[str] = None, behavior: Optional[str] = None, thing: Optional[str] = None
    ) -> Dict[str, List[Dict[str, Any]]]:
        """GetBehaviorModelTrainingSummaries: `summaries`, one per ML behavior (AWS's fields), and
        `thingSummaries`, one per (ML behavior, thing) (our extension; see
        garrison.detect.judge.mlbridge.MlRegistry.training_summaries). Filters: profile, behavior name, thing."""
        if profile is not None and self.store.get_profile(profile) is None:
            raise NotFound(f"no security profile named {profile!r}")
        if thing is not None and self.store.last_report(thing) is None:
            raise NotFound(f"no thing named {thing!r}")
        now_ms = self.clock.now_ms()
        out: Dict[str, List[Dict[str, Any]]] = {"summaries": [], "thingSummaries": []}
        found = False
        names = [profile] if profile is not None else [p["securityProfileName"] for p in self.store.list_profiles()]
        for name in names:
            parsed = self._profile(name)
            for item in parsed.behaviors if parsed else ():
                if behavior is not None and item.name != behavior:
                    continue
                found = True
                if item.kind != "ml":
                    if profile is not None and behavior is not None:
                        raise StoreError(f"behavior {behavior!r} of {profile!r} has no mlDetectionConfig")
                    continue
                if self.ml is None:
                    out["summaries"].append(
                        {"securityProfileName": name, "behaviorName": item.name, "modelStatus": PENDING_BUILD}
                    )
                    continue
                overall, per_thing = self.ml.training_summaries(
                    name, item, now_ms, self.store.things_under_profile(name), thing
                )
                if thing is None or per_thing:
                    out["summaries"].append(overall)
                    out["thingSummaries"].extend(per_thing)
        if behavior is not None and not found:
            raise NotFound(f"no behavior named {behavior!r}" + (f" in {profile!r}" if profile else ""))
        return out

    def attach(self, profile: str, target: str) -> bool:
        _check_target(target)
        with self.store.transaction():
            return self.store.attach(profile, target)

    def detach(self, profile: str, target: str) -> bool:
        with self.store.transaction():
            done = self.store.detach(profile, target)
            self._invalidate_stale(self.clock.now_ms())
        self.dispatch_alerts()
        return done

    # ---- things and groups --------------------------------------------------------------------

    def add_thing(self, name: str) -> bool:
        """Pre-register a thing (needed in strict mode)."""
        _check_thing_name(name)
        return self.store.register_thing(name, self.clock.now_ms(), pre_registered=True)

    def delete_thing(self, name: str) -> bool:
        with self.store.transaction():
            if not self.store.delete_thing(name):
                raise NotFound(f"no thing named {name!r}")
            forget_latest_report(self.store, name)
            self._invalidate_stale(self.clock.now_ms())
        self.dispatch_alerts()
        return True

    def create_group(self, name: str, description: str = "") -> bool:
        _check_thing_name(name, "group")
        return self.store.create_group(name, self.clock.now_ms(), description)

    def delete_group(self, name: str) -> bool:
        with self.store.transaction():
            if not self.store.delete_group(name):
                raise NotFound(f"no thing group named {name!r}")
            self._invalidate_stale(self.clock.now_ms())
        self.dispatch_alerts()
        return True

    def add_to_group(self, group: str, thing: str) -> bool:
        _check_thing_name(thing)
        return self.store.add_to_group(group, thing, self.clock.now_ms())

    def remove_from_group(self, group: str, thing: str) -> bool:
        with self.store.transaction():
            done = self.store.remove_from_group(group, thing)
            self._invalidate_stale(self.clock.now_ms())
        self.dispatch_alerts()
        return done

    # ---- responses an operator asks for ------------------------------------------------------

    def respond(self, thing: str, action: Mapping[str, Any], by: str, dry_run: bool = False) -> Dict[str, Any]:
        """Log an operator's action on `thing` (quarantine, release, disable, enable, run-command,
        reconfigure; or a group action), as a rule's would be; the runner carries it out. Returns
        the log entry (its `seq` lets the caller follow the outcome)."""
        _check_thing_name(thing)
        try:
            parsed = parse_action("operator/request", dict(action))
        except ActionError as exc:
            raise StoreError(str(exc).replace("actions.'operator/request': ", "")) from None
        with self.store.transaction():
            entry = execute_action(
                self.store,
                parsed,
                thing,
                self.clock.now_ms(),
                dry_run=dry_run or self.config.dry_run or parsed.dry_run,
                by=by,
            )
        if self.runner is not None:
            self.runner.wake()
        return next(e for e in self.store.list_actions(thing) if e["seq"] == entry["seq"])

    # ---- violations ---------------------------------------------------------------------------

    def active_violations(self, thing: Optional[str] = None, profile: Optional[str] = None) -> List[Dict[str, Any]]:
        return [
            violations.active_record(row)
            for row in self.store.list_violations(active_only=True, thing=thing, profile=profile)
        ]

    def all_violations(self, thing: Optional[str] = None, profile: Optional[str] = None) -> List[Dict[str, Any]]:
        return [violations.violation_record(row) for row in self.store.list_violations(thing=thing, profile=profile)]

    def violation_events(
        self,
        thing: Optional[str] = None,
        profile: Optional[str] = None,
        start_s: Optional[float] = None,
        end_s: Optional[float] = None,
    ) -> List[Dict[str, Any]]:
        rows = self.store.list_events(
            thing=thing,
            profile=profile,
            start_ms=None if start_s is None else int(start_s * 1000),
            end_ms=None if end_s is None else int(end_s * 1000),
        )
        return [Event.from_row(row).to_record() for row in rows]

    def verify(self, violation_id: str, state: str, description: Optional[str] = None) -> Dict[str, Any]:
        record = violations.verify(self.store, violation_id, state, description)
        if self.ml is not None:  # FALSE/BENIGN_POSITIVE teach an ML behavior's device model
            self.ml.feedback(record, state)
        return record

    # ---- reads the CLI and the API make (so neither reaches into the store) --------------------

    def list_things(self) -> List[Dict[str, Any]]:
        return self.store.list_things()

    def list_groups(self) -> List[Dict[str, Any]]:
        return self.store.list_groups()

    def profile_targets(self, profile: str) -> List[str]:
        """What the profile is attached to: all | group:NAME | thing:NAME."""
        return self.store.attachments_of(profile)

    def list_actions(self, thing: Optional[str] = None) -> List[Dict[str, Any]]:
        """The audit log of mitigation actions, optionally of one thing."""
        return self.store.list_actions(thing)

    def audit_store(self):
        """The audit's tasks, findings, suppressions and schedules, in the engine's database."""
        from garrison.detect.audit.store import AuditStore

        return AuditStore(self.store)


def _changes_nothing(behavior, state: Optional[Dict[str, Any]], value: int) -> bool:
    """Whether a sweep datapoint would change nothing: it conforms, and there is neither an alarm
    to clear nor a violating streak to break (so a fleet that reports costs the sweep no writes)."""
    state = state or {}
    return (
        evaluate.conforms(behavior.operator, value, behavior.criterion)
        and not state.get("alarm")
        and not state.get("violating")
    )


def _check_thing_name(name: str, what: str = "thing") -> None:
    if not isinstance(name, str) or not valid_thing_name(name):
        raise StoreError(f"{what} names are {NAME_SHAPE}, got {name!r}")


def _check_target(target: str) -> None:
    """An attach target names a thing or group by the naming rule (no MQTT wildcards or '/').
    Detaching is not checked, so a bad target stored by an older version can still be removed."""
    if not isinstance(target, str):
        raise StoreError(f"bad attachment target {target!r} (use all, group:NAME or thing:NAME)")
    kind, name = parse_target(target)
    if name is not None:
        _check_thing_name(name, kind)
