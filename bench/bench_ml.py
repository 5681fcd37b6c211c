#!/usr/bin/env python3
"""ML Detect evaluation on simulated fleets, against baselines measured in the same run.

Fleet: --devices devices (plus --new-devices that join at the start of week 3 with no history),
of 3 types (one security profile each), one report every 300 s for --weeks weeks, three metrics
each: aws:all-bytes-out (lognormal traffic with a per-device daily rhythm, weekend dip and rare
benign x2-4 bursts of one report), aws:num-listening-tcp-ports (a constant per device) and
aws:num-established-tcp-connections (Poisson with a daily rhythm). Devices differ in level, rhythm
amplitude and phase, weekend dip and noise.

Every device's first bytes-out datapoint is 0 (an agent's first report has zeroed deltas).
Weeks 1-2 train. In weeks 3+ half of the established devices get one injected anomaly each:
  spike     bytes-out x5..20 for 6 datapoints (30 min)
  exfil     bytes-out x1.4..2.0 sustained for 24 h (slow exfiltration)
  ports     listening TCP ports +1..3 from then on
  flood     established connections +40..300 for 12 datapoints (1 h)
Feedback: up to 16 quiet clean devices run a nightly x4 bytes-out job (30 min at 02:00) from week
3; half are benign and verified BENIGN_POSITIVE an hour after their first MEDIUM alarm (the model
is taught), half are an attacker's and verified TRUE_POSITIVE. The other clean devices (and all
new ones) give the false-alarm rate.

The harder fleet (--fleet harder|both) adds, in weeks 3+: a firmware update (every type-0 device
x3 bytes-out for 2 h), a maintenance window (every type-1 device: traffic x0.02, no connections,
no listening ports for 1 h), daylight saving (every type-2 device's rhythm one hour later from day
7), 4 % of the other devices moving their rhythm +-1 h alone, and reboots at 0.1 per device-day
(1-3 missing reports, then zeroed counters and no connections). Anomalies are kept out of their
own type's fleet events (which would hide them: see docs/ml-detect.md).

Printed per confidence level (consecutiveDatapointsToAlarm = 1): detection rate per anomaly
type, detection delay (datapoints and minutes, median), false alarms per device-day (alarm
events = runs of violating datapoints on clean devices), for
  ml (this version)  garrison.detect.judge.ml with MLConfig() (confirmation, phase tolerance, fleet events)
  ml v1              the same code with MLConfig.version1(), the first release's behaviour
  zscore             non-seasonal per-device z-score in log space, mean/sd from weeks 1-2, same sigmas
  static             one fleet-wide static threshold per metric: the p99.9 / p99.99 / p100 of weeks 1-2
                     values over the fleet (AWS statisticalThreshold style), upper side only
with, for this version, the fleet notices raised (and the device alarms they replaced) and the
feedback outcome. Then memory per device-metric (serialized and in memory, tracemalloc over
--memory-models models) and updates/s and judgements/s.

Run:  python3 bench/bench_ml.py [--devices 200] [--weeks 4] [--seed 7] [--fleet both] [--quick]
"""
import argparse
from collections import namedtuple
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garrison.detect.judge.ml import CONFIDENCE_LEVELS, STATE_SIZE, FleetPrior, MLConfig, Model  # noqa: E402
from garrison.detect.judge.ml.fleetevent import FleetEvents  # noqa: E402

STEP_S = 300
PER_DAY = 86400 // STEP_S
T0_MS = 1767571200000          # Monday 2026-01-05 00:00 UTC
METRICS = ("aws:all-bytes-out", "aws:num-listening-tcp-ports", "aws:num-established-tcp-connections")
KINDS = ("spike", "exfil", "ports", "flood")
STATIC_PERCENTILES = {"LOW": 99.9, "MEDIUM": 99.99, "HIGH": 100.0}
TYPES = 3                      # device types, one security profile each (fleet events are per type)
FEEDBACK_DELAY = 12            # the operator verifies an alarm an hour after it starts
Fleet = namedtuple("Fleet", "values episodes new start bursts types roles events")


def simulate(args, harder=False):
    """Returns a Fleet: values[metric] -> array (devices, points) (NaN: no report), episodes,
    new-device mask, start index, benign bursts, device types, feedback roles, fleet events."""
    rng = np.random.default_rng(args.seed)
    devices = args.devices + args.new_devices
    points = args.weeks * 7 * PER_DAY
    start = 14 * PER_DAY
    t = np.arange(points) * STEP_S
    hour = np.broadcast_to((t % 86400) / 3600.0, (devices, points)).copy()
    weekend = ((t // 86400) % 7 >= 5).astype(float)
    types = np.arange(devices) % TYPES                        # device type = security profile
    events = []                                               # (name, type or None, metric, first, last)
    extra = np.random.default_rng(args.seed + 1000)           # harder fleet's draws: keep the rest as is
    if harder:
        # Time-zone changes: every device of type 2 shifts its rhythm by an hour (daylight saving)
        # on day 6 of week 3; 4 % of the others move by +-1 h alone, at random times.
        dst = start + 6 * PER_DAY
        hour[types == 2, dst:] -= 1.0
        events.append(("time zone +1 h (DST)", 2, "all", dst, dst + PER_DAY))
        for device in np.flatnonzero((types != 2) & (extra.random(devices) < 0.04)):
            at = int(extra.integers(start, points - PER_DAY))
            hour[device, at:] += extra.choice((-1.0, 1.0))
    level = rng.normal(math.log(50_000), 1.0, devices)
    amp = rng.uniform(0.3, 1.2, devices)
    phase = rng.normal(0, 1.5, devices)
    dip = rng.uniform(-0.8, 0.0, devices)
    noise = rng.uniform(0.1, 0.4, devices)
    daily = (amp[:, None] * np.sin(2 * np.pi * (hour - 8 - phase[:, None]) / 24)
             + 0.3 * amp[:, None] * np.sin(4 * np.pi * (hour - phase[:, None]) / 24))
    log_bytes = level[:, None] + daily + dip[:, None] * weekend[None, :] \
        + rng.normal(0, 1, (devices, points)) * noise[:, None]
    bursts = rng.random((devices, points)) < 0.0005          # benign: updates, backups
    log_bytes += bursts * np.log(rng.uniform(2, 4, (devices, points)))
    values = {
        METRICS[0]: np.exp(log_bytes).round(),
        METRICS[1]: np.repeat(rng.integers(1, 9, devices)[:, None], points, axis=1).astype(float),
        METRICS[2]: rng.poisson(rng.uniform(2, 30, devices)[:, None]
                                * np.exp(0.5 * daily / np.maximum(amp[:, None], 1e-9) * 0.8)).astype(float),
    }
    if harder:
        update = (start + 2 * PER_DAY + 10 * 12, start + 2 * PER_DAY + 12 * 12)     # day 3, 10:00-12:00
        values[METRICS[0]][types == 0, update[0]:update[1]] *= 3
        events.append(("firmware update x3 bytes-out, 2 h", 0, METRICS[0], *update))
        window = (start + 4 * PER_DAY + 12, start + 4 * PER_DAY + 24)              # day 5, 01:00-02:00
        for metric, factor in ((METRICS[0], 0.02), (METRICS[1], 0.0), (METRICS[2], 0.0)):
            values[metric][types == 1, window[0]:window[1]] = (values[metric][types == 1, window[0]:window[1]]
                                                               * factor).round()
        events.append(("maintenance window (services down), 1 h", 1, "all", *window))
    episodes = []           # (device, kind, metric, first index, last index)
    for device in range(0, args.devices, 2):
        kind = KINDS[(device // 2) % len(KINDS)]
        begin = int(rng.integers(start + PER_DAY, points - 2 * PER_DAY))
        if harder:
            # An attack hidden in its own fleet's event would be the fleet notice's, not scored here.
            # (the DST change, events[0], is left to overlap: its deviations are small)
            while any(event_type == types[device] and begin < last + 24 and begin + PER_DAY > first
                      for _, event_type, _, first, last in events[1:]):
                begin = int(extra.integers(start + PER_DAY, points - 2 * PER_DAY))
        if kind == "spike":
            end = begin + 6
            values[METRICS[0]][device, begin:end] *= rng.uniform(5, 20)
            episodes.append((device, kind, METRICS[0], begin, end))
        elif kind == "exfil":
            end = begin + PER_DAY
            values[METRICS[0]][device, begin:end] = (values[METRICS[0]][device, begin:end]
                                                     * rng.uniform(1.4, 2.0)).round()
            episodes.append((device, kind, METRICS[0], begin, end))
        elif kind == "ports":
            end = begin + PER_DAY            # detection counted within a day; the change stays
            values[METRICS[1]][device, begin:] += rng.integers(1, 4)
            episodes.append((device, kind, METRICS[1], begin, end))
        else:
            end = begin + 12
            values[METRICS[2]][device, begin:end] += rng.integers(40, 301)
            episodes.append((device, kind, METRICS[2], begin, end))
    new = np.zeros(devices, bool)
    new[args.devices:] = True
    # Feedback: the 16 (fewer in small fleets) quietest (noise < 0.2) odd established devices run
    # a nightly job from week 3 on, x4 bytes-out for 30 min at 02:00: half of them a benign backup
    # (verified BENIGN_POSITIVE an hour after its first alarm), half an attacker's nightly upload
    # (verified TRUE_POSITIVE). Not counted as clean.
    roles = {}
    odd = [d for d in range(1, args.devices, 2) if noise[d] < 0.2]
    count = min(16, len(odd) // 2 * 2)
    if count >= 4:
        for k, device in enumerate(sorted(odd, key=lambda d: noise[d])[:count]):
            roles[device] = "benign" if k % 2 == 0 else "attack"
            for day in range(start // PER_DAY, points // PER_DAY):
                at = day * PER_DAY + 2 * 12
                values[METRICS[0]][device, at:at + 6] *= 4
    if harder:
        # Reboots, 0.1 per device-day: 1-3 missing reports, then one with zeroed counters and no
        # connections yet (the agent's first report after a restart).
        for device, at in zip(*np.nonzero(extra.random((devices, points)) < 0.1 / PER_DAY)):
            gone = int(extra.integers(1, 4))
            if at + gone >= points:
                continue
            for metric in METRICS:
                values[metric][device, at:at + gone] = np.nan
            values[METRICS[0]][device, at + gone] = 0
            values[METRICS[2]][device, at + gone] = 0
        events.append(("reboots: 1-3 missing reports, zeroed counters (0.1 per device-day)", None, "all", 0, 0))
    # An agent's first report carries zeroed deltas.
    values[METRICS[0]][~new, 0] = 0
    values[METRICS[0]][new, start] = 0
    return Fleet(values, episodes, new, start, bursts, types, roles, events)


def run_ml(fleet, config, levels, feedback_level="MEDIUM"):
    """Judge then learn every datapoint, as the engine does. Returns verdicts[level][metric] ->
    bool array (devices, points) from `start` (an alarm-worthy datapoint), directions[level]
    [metric] -> int8 array (+1 / -1 outside the band or shifted, confirmed or not: what fleet
    events count), judgement-basis counts of the new devices, updates/s, judgements/s, the models
    and what feedback did (device -> (index verified, what the model learned))."""
    values, new, start, roles = fleet.values, fleet.new, fleet.start, fleet.roles
    devices, points = values[METRICS[0]].shape
    models = {m: [Model.new(config) for _ in range(devices)] for m in METRICS}
    priors = {m: None for m in METRICS}
    verdicts = {lv: {m: np.zeros((devices, points - start), bool) for m in METRICS} for lv in levels}
    directions = {lv: {m: np.zeros((devices, points - start), np.int8) for m in METRICS} for lv in levels}
    basis_counts = {}
    taught = {}             # feedback device -> (index of the verified datapoint, what was learned)
    pending = {}            # feedback device -> (index to verify at, value, ts)
    spent_update = spent_judge = 0.0
    n_update = n_judge = 0
    for day in range(points // PER_DAY):
        lo, hi = day * PER_DAY, (day + 1) * PER_DAY
        for metric in METRICS:
            prior = priors[metric]
            rows = values[metric]
            for device in range(devices):
                if new[device] and lo < start:
                    continue
                model = models[metric][device]
                row = rows[device]
                role = roles.get(device) if metric == METRICS[0] else None
                for i in range(lo, hi):
                    value, ts = float(row[i]), T0_MS + i * STEP_S * 1000
                    if value != value:                  # NaN: no report (a reboot)
                        continue
                    if role and device in pending and i >= pending[device][0]:
                        # The operator's verification of the device's first alarm reaches the model.
                        _, alarm_value, alarm_ts, alarm_i = pending.pop(device)
                        learned = model.teach(alarm_value, alarm_ts, benign=role == "benign")
                        taught[device] = (alarm_i, learned)
                    if i >= start:
                        c0 = time.perf_counter()
                        for level in levels:
                            j = model.judge(value, ts, level, prior, metric)
                            if j.anomalous:
                                verdicts[level][metric][device, i - start] = True
                            directions[level][metric][device, i - start] = j.direction
                        spent_judge += time.perf_counter() - c0
                        n_judge += len(levels)
                        if new[device]:
                            key = (i - start) // PER_DAY, j.basis
                            basis_counts[key] = basis_counts.get(key, 0) + 1
                        if (role and device not in taught and device not in pending
                                and verdicts[feedback_level][metric][device, i - start]):
                            pending[device] = (i + FEEDBACK_DELAY, value, ts, i)
                    c0 = time.perf_counter()
                    model.update(value, ts, prior)
                    spent_update += time.perf_counter() - c0
                    n_update += 1
            # The engine's daily retrain: rebuild the fleet prior from the fleet's models.
            priors[metric] = FleetPrior.from_models(models[metric]) or prior
    return verdicts, directions, basis_counts, n_update / spent_update, n_judge / spent_judge, models, taught


def fleet_filter(fleet, verdicts, directions, config):
    """Fleet events as the engine's FleetEvents sees them, per device type (profile) and metric:
    a deviation at least config.fleet_event_fraction of the type's reporting devices (and at least
    fleet_event_min_devices) show in the same direction in one report interval. Causal: a
    device's alarm at interval i is turned into the fleet notice only if interval i - 1 (complete)
    was already such an event. Returns the verdicts left to alarm, and per level the fleet notices
    (type, metric, direction, first index) and the device alarms they replaced."""
    out, notices, absorbed = {}, {}, {}
    reported = {m: ~np.isnan(fleet.values[m][:, fleet.start:]) for m in METRICS}
    for level, per_metric in verdicts.items():
        out[level], notices[level], absorbed[level] = {}, [], 0
        for metric, verdict in per_metric.items():
            kept = verdict.copy()
            direction = directions[level][metric]
            for kind in range(TYPES):
                rows = fleet.types == kind
                judged = reported[metric][rows].sum(axis=0)
                for sign in (1, -1):
                    deviating = (direction[rows] == sign).sum(axis=0)
                    event = (deviating >= config.fleet_event_min_devices) & (
                        deviating >= config.fleet_event_fraction * np.maximum(judged, 1))
                    known = np.zeros_like(event)
                    known[1:] = event[:-1]
                    hit = kept[rows] & (direction[rows] == sign) & known[None, :]
                    absorbed[level] += int(np.count_nonzero(hit[:, 1:] & ~hit[:, :-1]) + np.count_nonzero(hit[:, 0]))
                    sub = kept[rows]
                    sub[hit] = False
                    kept[rows] = sub
                    # one notice per run of event intervals no more than fleet_event_clear_s apart
                    hold = max(1, config.fleet_event_clear_s // STEP_S)
                    at = np.flatnonzero(event)
                    opened = [int(b) for a, b in zip(np.concatenate(([-10**9], at[:-1])), at) if b - a > hold]
                    notices[level] += [(kind, metric, sign, i) for i in opened]
            out[level][metric] = kept
    return out, notices, absorbed


def run_zscore(values, start, levels, bands):
    verdicts = {}
    for level in levels:
        k = bands[level][0]
        verdicts[level] = {}
        for metric in METRICS:
            y = np.log1p(values[metric])
            mean = np.nanmean(y[:, :start], axis=1, keepdims=True)
            sd = np.maximum(np.nanstd(y[:, :start], axis=1, keepdims=True), 0.04)
            verdicts[level][metric] = np.abs((y[:, start:] - mean) / sd) > k
    return verdicts


def run_static(values, new, start, levels):
    verdicts = {}
    for level in levels:
        verdicts[level] = {}
        for metric in METRICS:
            threshold = np.nanpercentile(values[metric][~new, :start], STATIC_PERCENTILES[level])
            verdicts[level][metric] = values[metric][:, start:] > threshold
    return verdicts


def score(verdicts, fleet, judged_new=True):
    """Per level: {kind: (detected, total, delays)}, false alarms per device-day (all, and those
    starting at a benign burst) on established and on new clean devices."""
    episodes, new, start, bursts = fleet.episodes, fleet.new, fleet.start, fleet.bursts
    out = {}
    at_burst = {METRICS[0]: bursts[:, start:]}
    clean = [d for d in range(len(new)) if (new[d] or d % 2 == 1) and d not in fleet.roles]
    clean_old = [d for d in clean if not new[d]]
    clean_new = [d for d in clean if new[d]]
    for level, per_metric in verdicts.items():
        kinds = {k: [0, 0, []] for k in KINDS}
        for device, kind, metric, begin, end in episodes:
            hits = np.flatnonzero(per_metric[metric][device, begin - start:end - start])
            kinds[kind][1] += 1
            if hits.size:
                kinds[kind][0] += 1
                kinds[kind][2].append(int(hits[0]))
        any_alarm = np.zeros_like(per_metric[METRICS[0]])
        for metric in METRICS:
            any_alarm |= per_metric[metric]

        def rate(devs, days=None):
            if not devs:
                return float("nan"), float("nan")
            cut = days * PER_DAY if days else any_alarm.shape[1]
            events = benign = 0
            for metric in METRICS:
                v = per_metric[metric][devs][:, :cut]
                rising = np.zeros_like(v)
                rising[:, 0] = v[:, 0]
                rising[:, 1:] = v[:, 1:] & ~v[:, :-1]
                events += int(np.count_nonzero(rising))
                if metric in at_burst:
                    benign += int(np.count_nonzero(rising & at_burst[metric][devs][:, :cut]))
            device_days = len(devs) * cut / PER_DAY
            return events / device_days, benign / device_days

        out[level] = {"kinds": kinds, "clean_old": rate(clean_old),
                      "clean_new": rate(clean_new, 7) if judged_new else (float("nan"), float("nan"))}
    return out


def print_table(name, result, levels):
    print(f"\n== {name}")
    header = "level   " + "".join(f"{k + ' det':>11}{'delay':>12}" for k in KINDS) \
        + f"{'FA/dev-day':>12}{'(bursts)':>10}{'FA new wk1':>12}"
    print(header)
    for level in levels:
        r = result[level]
        row = f"{level:<8}"
        for kind in KINDS:
            det, total, delays = r["kinds"][kind]
            delay = (f"{statistics.median(delays):.0f}pt/{statistics.median(delays) * STEP_S / 60:.0f}m"
                     if delays else "-")
            row += f"{f'{det}/{total}':>11}{delay:>12}"
        row += f"{r['clean_old'][0]:>12.3f}{r['clean_old'][1]:>10.3f}{r['clean_new'][0]:>12.3f}"
        print(row)


def measure_memory(config, count):
    """Bytes per device-metric: serialized state and live Model objects (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    models = []
    for k in range(count):
        model = Model.new(config)
        for i in range(3):
            model.update(100.0 + k + i, T0_MS + i * 300_000)
        models.append(model)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    live = sum(s.size_diff for s in after.compare_to(before, "filename"))
    blobs = [m.to_state() for m in models]
    return live / count, len(blobs[0]), models


def feedback_summary(fleet, verdicts, taught, level="MEDIUM"):
    """Per role: nights whose 02:00 job alarmed (bytes-out, `level`), before and after the
    operator's verification."""
    out = {}
    alarms = verdicts[level][METRICS[0]]
    nights = range(fleet.start // PER_DAY, alarms.shape[1] // PER_DAY + fleet.start // PER_DAY)
    for role in ("benign", "attack"):
        before = after = after_nights = 0
        learned = set()
        for device, device_role in fleet.roles.items():
            if device_role != role:
                continue
            verified = taught.get(device, (10**9, ""))
            learned.add(verified[1] or "nothing")
            for night in nights:
                at = night * PER_DAY + 2 * 12 - fleet.start
                alarmed = bool(alarms[device, at:at + 18].any())
                if at + fleet.start < verified[0] + FEEDBACK_DELAY:
                    before += alarmed
                else:
                    after += alarmed
                    after_nights += 1
        out[role] = (before, after, after_nights, sorted(learned))
    return out


def run_fleet(args, harder, levels):
    fleet = simulate(args, harder)
    label = "harder fleet" if harder else "fleet"
    print(f"\n######## {label}: {args.devices} devices + {args.new_devices} new in week 3 ({TYPES} types), "
          f"{args.weeks} weeks, {STEP_S} s reports, {len(METRICS)} metrics, {len(fleet.episodes)} anomalies, "
          f"{len(fleet.roles)} feedback devices, seed {args.seed}")
    for name, kind, metric, first, last in fleet.events:
        print(f"  event: {name}" + (f" on every type-{kind} device" if kind is not None else "")
              + (f", day {(first - fleet.start) // PER_DAY + 1} of week 3+" if last else ""))
    configs = [("ml (this version)", MLConfig(**args.set))]
    if not args.no_v1:
        configs.append(("ml v1 (first release's configuration, same code)", MLConfig.version1()))
    results, extra = {}, {}
    for name, config in configs:
        c0 = time.perf_counter()
        verdicts, directions, basis, ups, jps, models, taught = run_ml(fleet, config, levels)
        notices, absorbed = None, None
        if config.fleet_event_fraction:
            verdicts, notices, absorbed = fleet_filter(fleet, verdicts, directions, config)
        results[name] = score(verdicts, fleet)
        extra[name] = (notices, absorbed, feedback_summary(fleet, verdicts, taught), basis, ups, jps, models,
                       time.perf_counter() - c0)
    results["zscore (non-seasonal per device)"] = score(run_zscore(fleet.values, fleet.start, levels,
                                                                   MLConfig().bands), fleet, judged_new=False)
    results["static (fleet percentile)"] = score(run_static(fleet.values, fleet.new, fleet.start, levels), fleet)
    for name, result in results.items():
        print_table(name, result, levels)
        if name not in extra:
            continue
        notices, absorbed, feedback, basis, ups, jps, models, spent = extra[name]
        if notices is not None:
            for level in levels:
                described = sorted({f"type {k} {m.split(':')[1]} {'up' if d > 0 else 'down'} day "
                                    f"{(i // PER_DAY) + 1} {(i % PER_DAY) * STEP_S // 3600:02d}h"
                                    for k, m, d, i in notices[level]})
                print(f"  fleet notices {level}: {len(notices[level])} (device alarms they replaced: "
                      f"{absorbed[level]})" + (": " + "; ".join(described[:8]) if described else "")
                      + (" ..." if len(described) > 8 else ""))
        if fleet.roles:
            for role, (before, after, nights, learned) in feedback.items():
                verified = "BENIGN_POSITIVE" if role == "benign" else "TRUE_POSITIVE"
                print(f"  feedback, nightly x4 job verified {verified} at its first MEDIUM alarm ({role}, "
                      f"{len(fleet.roles) // 2} devices): alarmed nights before verification "
                      f"{before}, after {after} of {nights} (model learned: {', '.join(learned)})")
        print(f"  ({spent:.0f} s)")
    return fleet, extra


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200, help="established devices (default 200)")
    parser.add_argument("--new-devices", type=int, default=40, help="devices joining in week 3 (default 40)")
    parser.add_argument("--weeks", type=int, default=4, help="simulated weeks, >= 3 (default 4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--memory-models", type=int, default=10_000)
    parser.add_argument("--fleet", choices=("normal", "harder", "both"), default="both",
                        help="the plain fleet, the harder one (fleet events, reboots, time zones) or both")
    parser.add_argument("--no-v1", action="store_true", help="skip the first release's configuration")
    parser.add_argument("--quick", action="store_true",
                        help="a small fleet for development: 80 devices + 16 new, 1000 memory models")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an MLConfig setting of this version (tuning), e.g. shift_rate=0.05")
    args = parser.parse_args()
    overrides = {}
    for key, value in (item.split("=", 1) for item in args.set):
        if key.startswith("bands."):        # bands.MEDIUM=5.0,1.3
            overrides.setdefault("bands", dict(MLConfig().bands))[key[6:]] = tuple(map(float, value.split(",")))
        else:
            overrides[key] = float(value) if "." in value or "e" in value else int(value)
    args.set = overrides
    if args.quick:
        args.devices, args.new_devices, args.memory_models = 80, 16, 1000
    if args.weeks < 3 or args.devices < 2:
        parser.error("need --weeks >= 3 and --devices >= 2")
    config = MLConfig()
    levels = CONFIDENCE_LEVELS
    t0 = time.perf_counter()
    last = None
    for harder in {"normal": (False,), "harder": (True,), "both": (False, True)}[args.fleet]:
        fleet, extra = run_fleet(args, harder, levels)
        last = last or (fleet, extra)
    fleet, extra = last
    notices, absorbed, feedback, basis, ups, jps, fleet_models, spent = extra["ml (this version)"]
    print("\ndetection within the episode (exfil: 24 h, ports: first 24 h, spike: 30 min, flood: 1 h);"
          " delay = median datapoints/minutes from the first anomalous datapoint to the first alarm;"
          " FA = alarm events per clean device-day (weeks 3+); (bursts) = those starting at one of the"
          f" injected benign bursts ({fleet.bursts[~fleet.new, fleet.start:].mean() * PER_DAY:.3f} per device-day,"
          " x2-4 for 5 min); 'new wk1' = new devices' first week (zscore: no history to judge them)")
    days = sorted({d for d, _ in basis})
    print("new devices, judgement basis per day: " + "; ".join(
        f"day {d + 1}: " + ", ".join(f"{b} {basis[(d, b)]}" for b in ("fleet", "device+fleet", "device")
                                     if (d, b) in basis) for d in days[:3]) + " ...")
    per_model, serialized, _ = measure_memory(config, args.memory_models)
    print(f"\nmemory per device-metric: {serialized} B serialized (STATE_SIZE {STATE_SIZE}), "
          f"{per_model:.0f} B live Model object (tracemalloc over {args.memory_models} models); "
          f"100k devices x 7 metrics = {per_model * 700_000 / 2**20:.0f} MiB live, "
          f"{serialized * 700_000 / 2**20:.0f} MiB stored")
    # Speed on the fleet's trained (ACTIVE) bytes-out models, continuing their own timeline.
    end_ms = T0_MS + fleet.values[METRICS[0]].shape[1] * STEP_S * 1000
    models = [m for m in fleet_models[METRICS[0]] if m.status(end_ms) == "ACTIVE"]
    pure_ups = pure_jps = 0.0
    calls = 20_000
    for repeat in range(3):                 # best of three: the machine is shared
        base = end_ms + repeat * calls * STEP_S * 1000
        data = [(models[i % len(models)], 50_000.0 + i % 997, base + i * STEP_S * 1000) for i in range(calls)]
        c0 = time.perf_counter()
        for model, value, ts in data:
            model.judge(value, ts, "HIGH")
        c1 = time.perf_counter()
        for model, value, ts in data:
            model.update(value, ts)
        c2 = time.perf_counter()
        pure_jps, pure_ups = max(pure_jps, calls / (c1 - c0)), max(pure_ups, calls / (c2 - c1))
    print(f"speed (one core, pure Python, {len(models)} ACTIVE models, best of 3): {pure_ups:,.0f} "
          f"updates/s, {pure_jps:,.0f} judgements/s (in the fleet loop above: {ups:,.0f} updates/s, "
          f"{jps:,.0f} judgements/s); "
          f"100k devices x 7 metrics every 300 s = "
          f"{700_000 / 300:,.0f} datapoints/s needed")
    print(f"bench time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
