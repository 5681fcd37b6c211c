"""garrison.detect.config: the engine's config file, checked by a pydantic model; every mistake
is one line naming the key's path."""
import pytest

from garrison.detect.config import ConfigError, from_dict

KNOWN_TOP = ("invalidation_period, sweep_interval, disconnect_duration_unit, fleet_stats_interval, fleet_min_devices, "
             "min_report_interval, strict, dry_run, client_id, api, alerts, actions, profiles, ml, audit, broker_log, "
             "cloud_metrics_interval, metric_retention, dead_letters")


@pytest.mark.parametrize("doc, message", [
    ({"strict": "yes"}, "strict: Input should be a valid boolean, got 'yes'"),
    ({"dry_run": 1}, "dry_run: Input should be a valid boolean, got 1"),
    ({"invalidation_period": "two days"}, "invalidation_period: expected seconds or a duration like \"30m\" or \"2d\", "
                                          "got 'two days'"),
    ({"sweep_interval": 0}, "sweep_interval: must be a finite number of seconds more than 0, got 0"),
    ({"fleet_stats_interval": float("inf")}, "fleet_stats_interval: must be a finite number of seconds more than 0, got inf"),
    ({"min_report_interval": -1}, "min_report_interval: expected seconds or a duration like \"30m\" or \"2d\", got -1"),
    ({"fleet_min_devices": 0}, "fleet_min_devices: Input should be greater than or equal to 1, got 0"),
    ({"fleet_min_devices": "5"}, "fleet_min_devices: Input should be a valid integer, got '5'"),
    ({"client_id": ""}, "client_id: String should have at least 1 character, got ''"),
    ({"colour": 3}, f"unknown setting 'colour' (known: {KNOWN_TOP})"),
    ({"api": {"bind": "localhost"}}, "api.bind: expected HOST:PORT such as 127.0.0.1:8765, got 'localhost'"),
    ({"api": {"bnd": "x"}}, "api: unknown setting 'bnd' (known: bind, token, token_file, metrics_public)"),
    ({"api": {"token": 5}}, "api.token: Input should be a valid string, got 5"),
    ({"api": "127.0.0.1:1"}, "api: Input should be a valid dictionary or instance of ApiSection, got '127.0.0.1:1'"),
    ({"profiles": [{"attach": "all"}]}, "profiles[0].file: is required"),
    ({"profiles": [{"file": "a.json"}, {"file": "b.json", "what": 1}]},
     "profiles[1]: unknown setting 'what' (known: file, attach)"),
    ({"profiles": [{"file": "a.json", "attach": ""}]}, "profiles[0].attach: String should have at least 1 character, got ''"),
    ({"profiles": {"file": "a.json"}}, "profiles: Input should be a valid list, got {'file': 'a.json'}"),
    ({"ml": 3}, "ml: Input should be a valid dictionary, got 3"),
    ({"actions": []}, "actions: Input should be a valid dictionary, got []"),
    ({"alerts": "x"}, "alerts: expected a table (log, mqtt, webhooks) or a list of targets"),
    ({"dead_letters": {"max_files": -1}}, "dead_letters.max_files: Input should be greater than or equal to 0, got -1"),
    ({"dead_letters": {"max_bytes": "64MiB"}}, "dead_letters.max_bytes: Input should be a valid integer, got '64MiB'"),
    ({"dead_letters": {"dir": "/x"}}, "dead_letters: unknown setting 'dir' (known: max_files, max_bytes)"),
])
def test_each_mistake_is_one_line_naming_the_key(doc, message):
    with pytest.raises(ConfigError) as info:
        from_dict(doc)
    assert str(info.value) == message


def test_a_valid_file_gives_the_engine_config(tmp_path):
    config = from_dict({"invalidation_period": "2d", "sweep_interval": "1s", "min_report_interval": "5m",
                        "fleet_min_devices": 3, "strict": True, "client_id": "eng-2",
                        "api": {"bind": "[::1]:9000", "token_file": "/t"},
                        "alerts": {"log": True}, "actions": {"P/b": {"type": "add-thing-to-group", "group": "q"}},
                        "profiles": [{"file": "p.json", "attach": "all"}, {"file": "q.json"}],
                        "ml": {"training_days": 7}}, tmp_path)
    assert (config.invalidation_period_s, config.sweep_interval_s, config.min_report_interval_s) == (172800, 1, 300)
    assert (config.fleet_min_devices, config.strict, config.dry_run, config.client_id) == (3, True, False, "eng-2")
    assert (config.api_bind, config.api_token, config.api_token_file, config.api_enabled) == ("[::1]:9000", None, "/t", True)
    assert config.alerts == {"log": True} and config.ml == {"training_days": 7}
    assert config.actions == {"P/b": {"type": "add-thing-to-group", "group": "q"}}
    assert config.profiles == [(str(tmp_path / "p.json"), "all"), (str(tmp_path / "q.json"), None)]
    assert from_dict({}).api_enabled is False and from_dict({}).disconnect_duration_unit_s == 60


def test_the_dead_letter_caps_default_to_1000_files_and_64_mib():
    default = from_dict({})
    assert (default.dead_letters_max_files, default.dead_letters_max_bytes) == (1000, 64 * 2**20)
    config = from_dict({"dead_letters": {"max_files": 10, "max_bytes": 0}})
    assert (config.dead_letters_max_files, config.dead_letters_max_bytes) == (10, 0)
