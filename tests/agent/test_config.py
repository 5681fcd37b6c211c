"""Configuration: declared once, layered (TOML < env < flags), and one clear line + exit 2 when bad."""
from pathlib import Path
from typing import List, Optional, get_type_hints

import pytest

from garrison.agent import config as cfg
from garrison.wire import names
from agent_helpers import run_agent

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agent-configuration.md"


def test_precedence_defaults_toml_env_flags(tmp_path):
    toml = tmp_path / "agent.toml"
    toml.write_text('thing = "from-toml"\ninterval = 60\nformat = "cbor"\ninterfaces = ["eth0", "wlan0"]\n')
    env = {"GARRISON_INTERVAL": "120", "GARRISON_SHORT_NAMES": "true"}
    loaded = cfg.load(str(toml), flags={"interval": "30"}, environ=env)
    assert loaded.thing == "from-toml"                 # TOML over default
    assert loaded.format == "cbor"
    assert loaded.interfaces == ["eth0", "wlan0"]
    assert loaded.short_names is True                  # env over default
    assert loaded.interval == 30.0                     # flag over env over TOML
    assert loaded.client_id == "from-toml"             # derived default
    assert loaded.keepalive == 60                      # default


def test_env_names_the_config_file(tmp_path):
    toml = tmp_path / "agent.toml"
    toml.write_text('thing = "via-env-file"\n')
    assert cfg.load(environ={"GARRISON_CONFIG": str(toml)}).thing == "via-env-file"


def test_default_thing_is_a_valid_thing_name():
    assert names.valid_thing_name(cfg.default_thing())


def test_disable_collector_wins_over_collectors():
    loaded = cfg.load(environ={}, collectors=["listening_tcp", "connections"], disable_collector=["connections"])
    assert loaded.enabled_collectors == ["listening_tcp"]


def test_config_annotations_match_the_options():
    """Config's annotations (what mypy checks attribute uses against) follow OPTIONS."""
    kinds = {"str": str, "path": str, "int": int, "float": float, "bool": bool, "list": List[str]}
    always_set = {"thing", "client_id", "state_dir"}  # load() fills them when unset
    expected = {
        opt.name: (
            kinds[opt.kind] if opt.default is not None or opt.name in always_set else Optional[kinds[opt.kind]]
        )
        for opt in cfg.OPTIONS
    }
    assert get_type_hints(cfg.Config) == expected


def test_docs_are_generated_from_the_declaration():
    assert DOCS.read_text() == cfg.markdown(), "run: python3 -m garrison.agent.config > docs/agent-configuration.md"


def test_help_explains_every_option():
    result = run_agent("run", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.decode().split())
    for opt in cfg.OPTIONS:
        assert opt.flag in text and opt.env in text
    assert "exit codes" in text


BAD = [
    (["--broker", "http://example.com"], "broker URL"),
    (["--broker", "mqtt://host:99999"], "broker URL"),
    (["--interval", "often"], "--interval must be a number"),
    (["--interval", "0"], "--interval must be at least"),
    (["--thing", "bad/thing"], "thing name"),
    (["--thing", "x" * 129], "thing name"),
    (["--format", "xml"], "--format must be one of"),
    (["--broker", "mqtts://localhost:8883", "--cert", "/nonexistent.crt", "--key", "/nonexistent.key"],
     "does not exist"),
    (["--broker", "mqtt://localhost:1883", "--ca", __file__], "need a TLS broker URL"),
    (["--collectors", "listening_tcp,teleport"], "unknown collector 'teleport'"),
    (["--no-such-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, args, message):
    result = run_agent("run", "--once", "--state-dir", str(tmp_path), *args)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("garrison-agent: error:") and message in lines[0]


BAD_TOML = [
    ('intervall = 5\n', "unknown option 'intervall'"),
    ('interval = "5"\n', "interval must be a number"),
    ('short_names = "yes"\n', "short_names must be true or false"),
    ('keepalive = 1.5\n', "keepalive must be an integer"),
    ('interval = [\n', "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD_TOML)
def test_bad_toml_gives_one_line_and_exit_2(tmp_path, text, message):
    toml = tmp_path / "agent.toml"
    toml.write_text(text)
    result = run_agent("run", "--once", "--config", str(toml), "--state-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_bad_environment_gives_one_line_and_exit_2(tmp_path):
    result = run_agent("collect", "--state-dir", str(tmp_path), env={"GARRISON_MAX_LIST_ITEMS": "lots"})
    assert result.returncode == 2
    assert result.stderr.decode().strip() == \
        "garrison-agent: error: GARRISON_MAX_LIST_ITEMS must be an integer, got 'lots'"


def test_missing_config_file(tmp_path):
    result = run_agent("collect", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr.decode()


def test_unusable_state_directory_gives_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_agent("run", "--once", "--state-dir", str(blocker / "state"))
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        f"garrison-agent: error: state directory '{blocker / 'state'}' is unusable: Not a directory"]
