#!/usr/bin/env python3
"""ML Detect evaluation on a simulated fleet, against naive baselines measured in the same run.

Fleet: --devices devices (plus --new-devices that join at the start of week 3 with no history),
one report every 300 s for --weeks weeks, three metrics each: aws:all-bytes-out (lognormal
traffic with a per-device daily rhythm, weekend dip and rare benign bursts), aws:num-listening-
tcp-ports (a constant per device) and aws:num-established-tcp-connections (Poisson with a daily
rhythm). Devices differ in level, rhythm amplitude and phase, weekend dip and noise.

Every device's first bytes-out datapoint is 0 (an agent's first report has zeroed deltas).
Weeks 1-2 train. In weeks 3+ half of the established devices get one injected anomaly each:
  spike     bytes-out x5..20 for 6 datapoints (30 min)
  exfil     bytes-out x1.4..2.0 sustained for 24 h (slow exfiltration)
  ports     listening TCP ports +1..3 from then on
  flood     established connections +40..300 for 12 datapoints (1 h)
the other half (and all new devices) stay clean and give the false-alarm rate.

Printed per confidence level (consecutiveDatapointsToAlarm = 1): detection rate per anomaly
type, detection delay (datapoints and minutes, median), false alarms per device-day (alarm
events = runs of violating datapoints on clean devices), for
  ml         garrison.detect.judge.ml models (per device, seasonal, fleet prior for new devices)
  zscore     non-seasonal per-device z-score in log space, mean/sd from weeks 1-2, same sigmas
  static     one fleet-wide static threshold per metric: the p99.9 / p99.99 / p100 of weeks 1-2
             values over the fleet (AWS statisticalThreshold style), upper side only
Then memory per device-metric (serialized and in memory, tracemalloc over --memory-models
models) and updates/s and judgements/s.

Run:  python3 bench/bench_ml.py [--devices 200] [--weeks 4] [--seed 7]
"""
import argparse
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garrison.detect.judge.ml import CONFIDENCE_LEVELS, STATE_SIZE, FleetPrior, MLConfig, Model  # noqa: E402

STEP_S = 300
PER_DAY = 86400 // STEP_S
T0_MS = 1767571200000          # Monday 2026-01-05 00:00 UTC
METRICS = ("aws:all-bytes-out", "aws:num-listening-tcp-ports", "aws:num-established-tcp-connections")
KINDS = ("spike", "exfil", "ports", "flood")
STATIC_PERCENTILES = {"LOW": 99.9, "MEDIUM": 99.99, "HIGH": 100.0}


def simulate(args):
    """Returns values[metric] -> array (devices, points), episodes, new-device mask, start index."""
    rng = np.random.default_rng(args.seed)
    devices = args.devices + args.new_devices
    points = args.weeks * 7 * PER_DAY
    t = np.arange(points) * STEP_S
    hour = (t % 86400) / 3600.0
    weekend = ((t // 86400) % 7 >= 5).astype(float)
    level = rng.normal(math.log(50_000), 1.0, devices)
    amp = rng.uniform(0.3, 1.2, devices)
    phase = rng.normal(0, 1.5, devices)
    dip = rng.uniform(-0.8, 0.0, devices)
    noise = rng.uniform(0.1, 0.4, devices)
    daily = (amp[:, None] * np.sin(2 * np.pi * (hour[None, :] - 8 - phase[:, None]) / 24)
             + 0.3 * amp[:, None] * np.sin(4 * np.pi * (hour[None, :] - phase[:, None]) / 24))
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
    start = 14 * PER_DAY
    episodes = []           # (device, kind, metric, first index, last index)
    for device in range(0, args.devices, 2):
        kind = KINDS[(device // 2) % len(KINDS)]
        begin = int(rng.integers(start + PER_DAY, points - 2 * PER_DAY))
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
    # An agent's first report carries zeroed deltas.
    values[METRICS[0]][~new, 0] = 0
    values[METRICS[0]][new, start] = 0
    return values, episodes, new, start, bursts


def run_ml(values, new, start, config, levels):
    """verdicts[level][metric] -> bool array (devices, points) from `start`; seconds spent."""
    devices, points = values[METRICS[0]].shape
    models = {m: [Model.new(config) for _ in range(devices)] for m in METRICS}
    priors = {m: None for m in METRICS}
    verdicts = {lv: {m: np.zeros((devices, points - start), bool) for m in METRICS} for lv in levels}
    basis_counts = {}
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
                for i in range(lo, hi):
                    value, ts = float(row[i]), T0_MS + i * STEP_S * 1000
                    if i >= start:
                        c0 = time.perf_counter()
                        for level in levels:
                            j = model.judge(value, ts, level, prior, metric)
                            if j.anomalous:
                                verdicts[level][metric][device, i - start] = True
                        spent_judge += time.perf_counter() - c0
                        n_judge += len(levels)
                        if new[device]:
                            key = (i - start) // PER_DAY, j.basis
                            basis_counts[key] = basis_counts.get(key, 0) + 1
                    c0 = time.perf_counter()
                    model.update(value, ts, prior)
                    spent_update += time.perf_counter() - c0
                    n_update += 1
            # The engine's daily retrain: rebuild the fleet prior from the fleet's models.
            priors[metric] = FleetPrior.from_models(models[metric]) or prior
    return verdicts, basis_counts, n_update / spent_update, n_judge / spent_judge, models


def run_zscore(values, start, levels, bands):
    verdicts = {}
    for level in levels:
        k = bands[level][0]
        verdicts[level] = {}
        for metric in METRICS:
            y = np.log1p(values[metric])
            mean = y[:, :start].mean(axis=1, keepdims=True)
            sd = np.maximum(y[:, :start].std(axis=1, keepdims=True), 0.04)
            verdicts[level][metric] = np.abs((y[:, start:] - mean) / sd) > k
    return verdicts


def run_static(values, new, start, levels):
    verdicts = {}
    for level in levels:
        verdicts[level] = {}
        for metric in METRICS:
            threshold = np.percentile(values[metric][~new, :start], STATIC_PERCENTILES[level])
            verdicts[level][metric] = values[metric][:, start:] > threshold
    return verdicts


def score(verdicts, episodes, new, start, bursts, judged_new=True):
    """Per level: {kind: (detected, total, delays)}, false alarms per device-day (all, and those
    starting at a benign burst) on established and on new clean devices."""
    out = {}
    at_burst = {METRICS[0]: bursts[:, start:]}
    clean = [d for d in range(len(new)) if new[d] or d % 2 == 1]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200, help="established devices (default 200)")
    parser.add_argument("--new-devices", type=int, default=40, help="devices joining in week 3 (default 40)")
    parser.add_argument("--weeks", type=int, default=4, help="simulated weeks, >= 3 (default 4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--memory-models", type=int, default=10_000)
    args = parser.parse_args()
    if args.weeks < 3 or args.devices < 2:
        parser.error("need --weeks >= 3 and --devices >= 2")
    config = MLConfig()
    levels = CONFIDENCE_LEVELS
    t0 = time.perf_counter()
    values, episodes, new, start, bursts = simulate(args)
    print(f"fleet: {args.devices} devices + {args.new_devices} new in week 3, {args.weeks} weeks, "
          f"{STEP_S} s reports, {len(METRICS)} metrics, {len(episodes)} anomalies, seed {args.seed}")
    verdicts, basis, ups, jps, fleet_models = run_ml(values, new, start, config, levels)
    results = {
        "ml (garrison.detect.judge.ml)": score(verdicts, episodes, new, start, bursts),
        "zscore (non-seasonal per device)": score(run_zscore(values, start, levels, config.bands),
                                                  episodes, new, start, bursts, judged_new=False),
        "static (fleet percentile)": score(run_static(values, new, start, levels),
                                           episodes, new, start, bursts),
    }
    for name, result in results.items():
        print_table(name, result, levels)
    print("\ndetection within the episode (exfil: 24 h, ports: first 24 h, spike: 30 min, flood: 1 h);"
          " delay = median datapoints/minutes from the first anomalous datapoint to the first alarm;"
          " FA = alarm events per clean device-day (weeks 3+); (bursts) = those starting at one of the"
          f" injected benign bursts ({bursts[~new, start:].mean() * PER_DAY:.3f} per device-day, x2-4 for"
          " 5 min); 'new wk1' = new devices' first week (zscore: no history to judge them)")
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
    end_ms = T0_MS + values[METRICS[0]].shape[1] * STEP_S * 1000
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
