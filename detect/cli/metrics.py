"""`garrison-detect metrics values`: a thing's metric history (AWS ListMetricValues)."""

import json
from datetime import datetime, timezone


def add_parser(sub, db_parent) -> None:
    """Add the command to the `garrison-detect` subparsers `sub`."""
    from garrison.detect.cli import common

    common.add_with_helpers(sub, db_parent, add_commands)


def add_commands(command, actions_of, action) -> None:
    """Hook the `metrics` command into the CLI's parser (the helpers of detect.cli.build_parser)."""
    metrics = command("metrics", "Metric history (ListMetricValues): what a thing reported and the broker saw.")
    sub = actions_of(metrics)
    p = action(
        sub,
        "values",
        "a thing's values of one metric over time, oldest first (kept for the engine's "
        "metric_retention, 14 days by default: every metric a behavior uses, plus additionalMetricsToRetainV2)",
    )
    p.add_argument("--thing", required=True, help="thingName")
    p.add_argument("--metric", required=True, help="metricName, e.g. aws:all-bytes-out or a custom metric")
    p.add_argument("--start", type=float, metavar="EPOCH_SECONDS", help="startTime (default: the oldest kept)")
    p.add_argument("--end", type=float, metavar="EPOCH_SECONDS", help="endTime (default: now)")
    p.add_argument("--dimension-name", help="dimensionName the values were kept under (a metricDimension)")
    p.add_argument("--dimension-operator", choices=("IN", "NOT_IN"), help="dimensionValueOperator")
    p.add_argument("--max-results", type=int, help="page size, 1-250 (default 250)")
    p.add_argument("--next-token", help="the nextToken of the previous page")
    p.add_argument("--json", action="store_true", help='{"metricDatumList": [...], "nextToken": ...}')
    metrics.set_defaults(func=cmd_metrics)


def cmd_metrics(args) -> int:
    from garrison.detect.cli.common import engine_on

    engine = engine_on(args.db)
    page = engine.list_metric_values(
        args.thing,
        args.metric,
        args.start,
        args.end,
        args.dimension_name,
        args.dimension_operator,
        args.max_results,
        args.next_token,
    )
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    if not page["metricDatumList"]:
        print(f"no values of {args.metric} kept for {args.thing}")
    for datum in page["metricDatumList"]:
        when = datetime.fromtimestamp(datum["timestamp"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when}  {json.dumps(datum['value'], separators=(',', ':'))}")
    if page.get("nextToken"):
        print(f"more: --next-token {page['nextToken']}")
    return 0
