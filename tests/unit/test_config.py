from __future__ import annotations

import pickle

import pytest

from eyenet.config import DEFAULT_METRICS, EyeNetConfig, load_config
from eyenet.errors import ConfigError


def test_defaults_follow_the_seed():
    c = load_config(env={})
    assert c.metrics == DEFAULT_METRICS
    assert c.alerts.latency_avg_ms == 100
    assert c.alerts.drift_threshold == 0.3
    assert c.store_uri.startswith("sqlite:///")
    assert c.gap_s == 3 * c.sample_interval_s


def test_yaml_then_env_precedence(tmp_path):
    path = tmp_path / "eyenet.yaml"
    path.write_text("sample_interval_s: 120\nmetrics: [cpu, latency]\ncounter_metrics: []\n"
                    "alerts:\n  latency_avg_ms: 150\n")
    c = load_config(path, env={"EYENET_SAMPLE_INTERVAL_S": "60", "EYENET_SERVE__MAX_REPLICAS": "4"})
    assert (c.sample_interval_s, c.metrics, c.alerts.latency_avg_ms, c.serve.max_replicas) == \
        (60, ["cpu", "latency"], 150, 4)
    assert load_config(env={"EYENET_CONFIG": str(path)}).sample_interval_s == 120


def test_env_lists_take_commas_or_json():
    c = load_config(env={"EYENET_METRICS": "a, b", "EYENET_COUNTER_METRICS": '["a"]'})
    assert (c.metrics, c.counter_metrics) == (["a", "b"], ["a"])


def test_one_metric_works_as_for_nab():
    c = load_config(env={"EYENET_METRICS": "value", "EYENET_COUNTER_METRICS": ""})
    assert c.metrics == ["value"] and c.counter_metrics == []


def test_serve_autoscaling_delays_default_to_serves_own():
    """Unset, the delays and look-back are what Serve would use without them."""
    from ray.serve.config import AutoscalingConfig

    ours, serves = EyeNetConfig().serve, AutoscalingConfig()
    names = ("upscale_delay_s", "downscale_delay_s", "look_back_period_s")
    assert {n: getattr(ours, n) for n in names} == {n: getattr(serves, n) for n in names}


@pytest.mark.parametrize("env, field, needles", [
    ({"EYENET_SAMPLE_INTERVAL_S": "-5"}, "sample_interval_s",
     ["sample_interval_s = '-5'", "EYENET_SAMPLE_INTERVAL_S", "greater than 0"]),
    ({"EYENET_SAMPLE_INTERVAL_S": "soon"}, "sample_interval_s", ["'soon'", "a valid number"]),
    ({"EYENET_COUNTER_BITS": "16"}, "counter_bits", ["'16'", "32 or 64"]),
    ({"EYENET_STORE_URI": "postgres://x"}, "store_uri", ["postgres://x", "sqlite:///"]),
    ({"EYENET_METRICS": "a b"}, "metrics", ["'a b'", "must match"]),
    ({"EYENET_METRICS": "x,x", "EYENET_COUNTER_METRICS": ""}, "metrics", ["unique", "'x'"]),
    ({"EYENET_METRICS": "label", "EYENET_COUNTER_METRICS": ""}, "metrics", ["reserved"]),
    ({"EYENET_METRICS": "a"}, None, ["counter_metrics", "not in metrics"]),
    ({"EYENET_SERVE__MIN_REPLICAS": "3"}, "serve", ["max_replicas (2)", "min_replicas (3)"]),
    ({"EYENET_SERVE__DOWNSCALE_DELAY_S": "-1"}, "serve.downscale_delay_s",
     ["'-1'", "greater than or equal to 0"]),
    ({"EYENET_SERVE__LOOK_BACK_PERIOD_S": "0"}, "serve.look_back_period_s", ["'0'", "greater than 0"]),
    ({"EYENET_SERVE__REPLICA_CPUS": "-0.5"}, "serve.replica_cpus", ["'-0.5'", "greater than or equal to 0"]),
    ({"EYENET_METRIC_MAX": '{"latency": -1}'}, None, ["metric_max", "> 0"]),
    ({"EYENET_METRIC_MAX": "{oops"}, "EYENET_METRIC_MAX", ["not valid JSON"]),
    ({"EYENET_SAMPLE_INTERVL_S": "5"}, "EYENET_SAMPLE_INTERVL_S",
     ["not a config setting", "EYENET_SAMPLE_INTERVAL_S"]),
    ({"EYENET_ALERTS__NOPE": "5"}, "EYENET_ALERTS__NOPE", ["EYENET_ALERTS__LATENCY_AVG_MS"]),
])
def test_bad_values_name_field_value_and_expectation(env, field, needles):
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert info.value.field == field
    for needle in needles:
        assert needle in str(info.value)


def test_a_removed_setting_says_what_replaced_it(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("window_s: 300\n")
    with pytest.raises(ConfigError, match=r"window_s \(300\) was removed: a window is detector.window_steps"):
        load_config(path, env={})


def test_yaml_problems_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample_interval_s: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(bad, env={})
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad, env={})
    bad.write_text("windw_s: 5\n")
    with pytest.raises(ConfigError, match=r"windw_s: unknown setting .*bad.yaml"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", env={})


def test_reserved_env_vars_are_not_settings():
    c = load_config(env={"EYENET_API_KEY": "secret", "EYENET_TEST_MONGO_URI": "mongodb://x"})
    assert "secret" not in str(c.to_dict())


def test_the_test_suites_component_variables_are_not_settings():
    # .ci/run exports these for the whole test run; every `eyenet` the tests start reads them
    env = {"EYENET_TEST_SNMP_ADDR": "127.0.0.1:1161", "EYENET_TEST_COMPONENTS_DIR": "/tmp/c",
           "EYENET_TEST_SNMPD_PID": "42"}
    assert load_config(env=env).to_dict() == load_config(env={}).to_dict()


def test_round_trip_and_pickle():
    c = load_config(env={"EYENET_SAMPLE_INTERVAL_S": "42"})
    assert EyeNetConfig.from_dict(c.to_dict()) == c
    assert pickle.loads(pickle.dumps(c)) == c


def test_metric_limits():
    c = EyeNetConfig(metric_max={"latency": 5000})
    assert c.metric_limit("latency") == 5000
    assert c.metric_limit("packets_in") == 2e9
    custom = EyeNetConfig(metrics=["hits"], counter_metrics=["hits"])
    assert custom.metric_limit("hits") == custom.max_counter_rate_per_s


def test_detector_settings_are_validated_with_the_field_named():
    with pytest.raises(ConfigError, match=r"detector.window_steps = '1', from EYENET_DETECTOR__WINDOW_STEPS"):
        load_config(env={"EYENET_DETECTOR__WINDOW_STEPS": "1"})
    with pytest.raises(ConfigError, match="device_thresholds must lie strictly between 0 and 1"):
        load_config(env={"EYENET_DETECTOR__DEVICE_THRESHOLDS": '{"r1": 1.5}'})
    cfg = load_config(env={"EYENET_DETECTOR__DEVICE_THRESHOLDS": '{"r1": 0.8}',
                           "EYENET_DETECTOR__MAX_TRAIN_TIME_S": "none"})
    assert cfg.detector.device_thresholds == {"r1": 0.8} and cfg.detector.max_train_time_s is None
    assert cfg.detector.smoothing == cfg.detector.window_steps


def test_the_false_alarm_budget_caps_the_point_risk_by_the_sampling_rate():
    """One false alarm a day: a device sampled every second is held to 30 / 86400 of its
    points (span 30), ten-second samples to ten times that, minute samples keep the 1 %."""
    detector = EyeNetConfig().detector
    assert detector.false_alarms_per_day == 1.0 and detector.smoothing == 30
    assert detector.point_risk(1.0) == pytest.approx(30 / 86400)
    assert detector.point_risk(10.0) == pytest.approx(300 / 86400)
    assert detector.point_risk(60.0) == detector.threshold_risk == 0.01
    assert detector.point_risk(None) == detector.threshold_risk  # no spacing known: the risk as set
    unbudgeted = load_config(env={"EYENET_DETECTOR__FALSE_ALARMS_PER_DAY": "none"}).detector
    assert unbudgeted.point_risk(1.0) == unbudgeted.threshold_risk
    with pytest.raises(ConfigError, match=r"detector\.false_alarms_per_day"):
        load_config(env={"EYENET_DETECTOR__FALSE_ALARMS_PER_DAY": "0"})


def test_an_unset_forecast_level_is_decided_by_the_span_of_the_training_history():
    detector = EyeNetConfig().detector
    assert detector.forecast_from_window_mean is None and detector.learn_s == 86400
    assert detector.for_history(1800).forecast_from_window_mean is True
    assert detector.for_history(5 * 86400).forecast_from_window_mean is False
    fixed = load_config(env={"EYENET_DETECTOR__FORECAST_FROM_WINDOW_MEAN": "false"}).detector
    assert fixed.for_history(1800) is fixed and fixed.forecast_from_window_mean is False
