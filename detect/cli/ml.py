"""`garrison-detect ml summaries`: ML Detect model status per behavior and per thing."""

from garrison.detect import config as configuration
from garrison.detect.cli.common import action, actions_of, command, engine_on, percent, show, when


def add_parser(sub, db_parent) -> None:
    mlc = command(sub, db_parent, "ml", "ML Detect: model status per behavior and per thing.")
    msub = actions_of(mlc)
    p = action(
        msub,
        db_parent,
        "summaries",
        "model status (PENDING_BUILD, ACTIVE, EXPIRED) per ML behavior and "
        "per thing, with datapoints collected and what judges the next datapoint",
    )
    p.add_argument("--profile", help="only this security profile")
    p.add_argument("--behavior", help="only behaviors of this name")
    p.add_argument("--thing", help="only this thing's models")
    p.add_argument("--config", help="the engine's configuration file, for its [ml] training settings")
    p.add_argument("--json", action="store_true", help='{"summaries": [...], "thingSummaries": [...]}')
    mlc.set_defaults(func=run)


def run(args) -> int:
    """ML Detect model status, per behavior and per thing (GetBehaviorModelTrainingSummaries)."""
    from garrison.detect.clock import from_environment

    # the [ml] section of the engine's config decides when a model is trained (and so its percentage)
    config = configuration.load(args.config) if args.config else configuration.Config()
    engine = engine_on(args.db, config, from_environment())
    result = engine.ml_training_summaries(args.profile, args.behavior, args.thing)
    rows = []
    for s in [] if args.thing else result["summaries"]:
        counts = s.get("modelStatusCounts") or {}
        rows.append(
            (
                s["securityProfileName"],
                s["behaviorName"],
                f"({sum(counts.values())} things)",
                s["modelStatus"],
                "-",
                percent(s.get("datapointsCollectionPercentage")),
                "-",
                when(s.get("trainingDataCollectionStartDate")),
                when(s.get("lastModelRefreshDate")),
            )
        )
    for s in result["thingSummaries"]:
        rows.append(
            (
                s["securityProfileName"],
                s["behaviorName"],
                s["thingName"],
                s["modelStatus"],
                s["datapoints"],
                percent(s["datapointsCollectionPercentage"]),
                s["basis"],
                when(s["trainingDataCollectionStartDate"]),
                when(s["lastModelRefreshDate"]),
            )
        )
    show(
        args,
        result,
        (
            "PROFILE",
            "BEHAVIOR",
            "THING",
            "STATUS",
            "DATAPOINTS",
            "COLLECTED",
            "JUDGED BY",
            "TRAINING SINCE",
            "LAST REFRESH",
        ),
        rows,
        "no ML behaviors",
    )
    return 0
