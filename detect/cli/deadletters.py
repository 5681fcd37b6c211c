"""`garrison-detect dead-letters`: reports the engine set aside after failing to handle them."""

from garrison.detect.cli.common import command, show, when


def add_parser(sub, db_parent) -> None:
    dead = command(
        sub,
        db_parent,
        "dead-letters",
        "Reports the engine set aside after failing to handle them "
        "again and again (kept in DB.dead-letters/, one JSON file each, payload in base64).",
    )
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=run)


def run(args) -> int:
    from garrison.detect.ingest.deadletter import DeadLetters

    records = DeadLetters(f"{args.db}.dead-letters").list()
    show(
        args,
        records,
        ("TIME", "TOPIC", "BYTES", "ATTEMPTS", "REASON", "FILE"),
        [
            (when(r["time_ms"] / 1000.0), r["topic"], r["size"], r["attempts"], r["reason"][:80], r["file"])
            for r in records
        ],
        "no dead letters",
    )
    return 0
