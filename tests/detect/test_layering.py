"""The engine's layout holds (issue 11 part 3): the API, the CLI and the audit use the engine
facade, never the store behind it; ingest and the engine do not import each other."""
import re
from pathlib import Path

DETECT = Path(__file__).resolve().parents[2] / "detect"


def _sources(*folders: str):
    for folder in folders:
        for path in sorted((DETECT / folder).rglob("*.py")):
            yield path, path.read_text()


def test_api_cli_and_audit_go_through_the_engine_facade():
    reaching_in = [f"{path.relative_to(DETECT)}:{n}" for path, text in _sources("api", "cli", "audit")
                   for n, line in enumerate(text.splitlines(), 1) if re.search(r"\bengine\.store\b", line)]
    assert reaching_in == []


def test_ingest_and_engine_do_not_import_each_other():
    engine = (DETECT / "engine.py").read_text()
    assert not re.search(r"^\s*(from|import) garrison\.detect\.ingest|^\s*from garrison\.detect import ingest", engine, re.M)
    for path, text in _sources("ingest"):
        assert not re.search(r"^\s*(from|import) garrison\.detect\.engine|^\s*from garrison\.detect import engine", text,
                             re.M), path


def test_an_engine_on_sqlite_loads_no_postgresql_or_nats_client():
    """psycopg alone is 9 MB of RSS and 60 ms of start-up: loaded only when --db or --nats asks."""
    import subprocess
    import sys
    probe = ("import sys, garrison.detect.cli, garrison.detect.service; garrison.detect.cli.build_parser(); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'psycopg', 'nats'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
