"""`garrison-detect dead-letters`: reports the engine set aside after failing to handle them."""

from garrison.detect.cli.common import UsageError, command, show, when


def add_parser(sub, db_parent) -> None:
    dead = command(
        sub,
        db_parent,
        "dead-letters",
        "Reports the engine set aside after failing to handle them "
        "again and again (kept in DB.dead-letters/ or serve's --dead-letters DIR, one JSON file "
        "each, payload in base64), oldest first.",
    )
    dead.add_argument(
        "--dir", metavar="DIR", help="the directory serve was given with --dead-letters (default DB.dead-letters)"
    )
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=run)


def run(args) -> int:
    from garrison.detect.ingest.deadletter import DeadLetters
    from garrison.detect.state.store import is_postgres

    if not args.dir and is_postgres(args.db):
        raise UsageError(
            "on PostgreSQL, dead letters are kept only where serve --dead-letters DIR says: give --dir DIR"
        )
    records = DeadLetters(args.dir or f"{args.db}.dead-letters").list()
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
