"""Telemetry sources: the simulated fleet (random access, incidents, bad input) and replay.

Checks run the simulator's output through the real validator, because what matters is
what a collector ends up storing: rates, repairs and rejections.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.errors import SourceError
from eyenet.sources.base import FetchResult, Source
from eyenet.sources.factory import build_source
from eyenet.sources.incidents import DAY_MS, Incident
from eyenet.sources.replay import ReplaySource
from eyenet.sources.simulator import SimulatedSource
from eyenet.telemetry.schema import to_ms
from eyenet.telemetry.validation import TelemetryValidator, ValidationResult

T0 = 1_740_787_200_000  # 2025-03-01T00:00Z
LATER = T0 + 30 * DAY_MS  # the simulated clock's start: everything before it is history
MIN = 60_000
TRAFFIC = ["bytes_in", "bytes_out", "packets_in", "packets_out"]
SMD = Path("/work/shared/datasets/smd/machine-1-6/test.csv.gz")


def config(**kw) -> EyeNetConfig:
    return EyeNetConfig(**{"sample_interval_s": 10, **kw})


def sim(cfg: EyeNetConfig | None = None, **kw) -> SimulatedSource:
    return SimulatedSource(cfg or config(), **{"start_ms": LATER, **kw})


def validate(frame: pd.DataFrame, cfg: EyeNetConfig, now_ms: int = LATER) -> ValidationResult:
    return TelemetryValidator(cfg, now_s=lambda: now_ms / 1000).validate(frame)


def ms(frame: pd.DataFrame) -> np.ndarray:
    return to_ms(frame["timestamp"]).to_numpy()


def by_time(frame: pd.DataFrame, device: str) -> pd.DataFrame:
    return frame[frame["device_id"] == device].set_index("timestamp").sort_index()


# -- simulated: the contract collectors rely on -------------------------------------------

def test_fetch_is_deterministic_and_additive_over_ranges():
    opts = dict(devices=4, seed=7, incident_rate_per_device_day=6.0, garbage_rate=0.02)
    a, b = T0 + DAY_MS - 3 * 3600_000 + 3, T0 + DAY_MS + 3 * 3600_000  # across midnight
    m = a + 9_317_005
    src = sim(**opts)
    whole = src.fetch(src.devices(), a, b).samples
    parts = pd.concat([src.fetch(src.devices(), a, m).samples, src.fetch(src.devices(), m, b).samples],
                      ignore_index=True)
    pd.testing.assert_frame_equal(whole, parts, check_dtype=False)
    # a rebuilt source (a restarted collector) regenerates the same samples, in any order
    again = sim(**opts)
    again.fetch(again.devices(), b, b + 3600_000)
    pd.testing.assert_frame_equal(whole, again.fetch(again.devices(), a, b).samples)
    other = sim(**{**opts, "seed": 8}).fetch(src.devices(), a, b).samples
    assert not other.head(4).equals(whole.head(4))


def test_long_fetches_are_generated_in_chunks_with_the_same_result(monkeypatch):
    src = sim(devices=3, seed=9, incident_rate_per_device_day=8.0, garbage_rate=0.05)
    whole = src.fetch(src.devices(), T0, T0 + 3 * 3600_000).samples
    monkeypatch.setattr("eyenet.sources.simulator.MAX_FETCH_POINTS", 100)
    pd.testing.assert_frame_equal(src.fetch(src.devices(), T0, T0 + 3 * 3600_000).samples, whole,
                                  check_dtype=False)


def test_one_sample_per_device_per_tick_on_the_grid_within_the_range():
    src = sim(devices=3)
    since, until = T0 + 1234, T0 + 10 * MIN + 5678
    r = src.fetch(["dev-0002", "dev-0000"], since, until)
    assert isinstance(r, FetchResult) and r.failed == {}
    stamps = ms(r.samples)
    assert ((stamps > since) & (stamps <= until)).all() and (stamps % 10_000 == 0).all()
    assert set(r.samples["device_id"]) == {"dev-0002", "dev-0000"}
    assert len(r.samples) == 2 * 60 and not r.samples.duplicated(["device_id", "timestamp"]).any()
    assert str(r.samples["timestamp"].dt.tz) == "UTC"
    assert (r.samples["label"] == 0).all()
    assert src.fetch(["dev-0000"], since, since + 5).samples.empty


def test_clock_caps_fetches_and_speed_accelerates_it():
    wall = [1000.0]
    src = sim(devices=2, speed=60.0, origin_wall_s=1000.0, start_ms=T0, clock=lambda: wall[0])
    assert src.now_ms() == T0
    wall[0] = 1010.0
    assert src.now_ms() == T0 + 600_000
    r = src.fetch(src.devices(), T0, T0 + DAY_MS)
    assert r.samples["timestamp"].max() == pd.Timestamp(T0 + 600_000, unit="ms", tz="UTC")
    pd.testing.assert_frame_equal(r.samples, src.fetch(src.devices(), T0, src.now_ms()).samples)
    default = SimulatedSource(config(), devices=1, origin_wall_s=1000.004, clock=lambda: 1000.004)
    assert default.now_ms() == 1_000_000  # start_ms defaults to the origin, floored to the grid


def test_counters_are_monotonic_and_rates_follow_a_daily_cycle():
    cfg = config(sample_interval_s=60)
    src = sim(cfg, devices=5, seed=2)
    raw = src.fetch(src.devices(), T0, T0 + DAY_MS).samples
    res = validate(raw, cfg)
    assert res.n_rejected == 0
    assert set(res.repaired_counts) == {f"counter_baseline:{m}" for m in TRAFFIC}
    for dev in src.devices():
        counters = by_time(raw, dev)[TRAFFIC]
        assert (counters.diff().iloc[1:] > 0).all().all()
        rates = by_time(res.accepted, dev).iloc[1:]
        assert np.isfinite(rates[TRAFFIC]).all().all() and (rates[TRAFFIC] > 0).all().all()
        hourly = rates[cfg.metrics].resample("1h").mean()
        assert hourly["bytes_in"].max() > 1.3 * hourly["bytes_in"].min()  # amplitude >= 0.2
        assert hourly["bytes_in"].corr(hourly["latency"]) > 0.8  # latency rises with utilisation
        assert rates["bytes_in"].corr(rates["bytes_out"]) > 0.5
        size = rates["bytes_in"] / rates["packets_in"]
        assert 250 < size.median() < 1500 and size.std() / size.mean() < 0.1
        assert rates["bytes_in"].corr(rates["packets_in"]) > 0.9


def test_counters_wrap_at_32_bits_and_the_validator_recovers_the_rates():
    cfg32, cfg64 = config(sample_interval_s=1, counter_bits=32), config(sample_interval_s=1)
    raw32 = sim(cfg32, devices=6, seed=4).fetch([f"dev-000{i}" for i in range(6)], T0, T0 + 10 * MIN).samples
    raw64 = sim(cfg64, devices=6, seed=4).fetch([f"dev-000{i}" for i in range(6)], T0, T0 + 10 * MIN).samples
    assert (raw32[TRAFFIC] < 2**32).all().all()
    r32, r64 = validate(raw32, cfg32), validate(raw64, cfg64)
    assert r32.repaired_counts["counter_wrap:bytes_in"] > 0
    assert r64.repaired_counts["counter_wrap:bytes_in"] == 0
    assert r32.n_rejected == 0
    np.testing.assert_allclose(r32.accepted[TRAFFIC].to_numpy(), r64.accepted[TRAFFIC].to_numpy(), rtol=1e-6)


def test_traffic_metrics_configured_as_gauges_are_rates():
    cfg = config(counter_metrics=["bytes_in"], metrics=["bytes_in", "bytes_out", "cpu"])
    src = sim(cfg, devices=2)
    raw = src.fetch(src.devices(), T0, T0 + 30 * MIN).samples
    rates = validate(raw, cfg).accepted.dropna()
    assert (rates["bytes_in"] / rates["bytes_out"]).between(0.5, 4).all()
    assert (raw["cpu"] > 0).all() and raw["cpu"].nunique() > 100


# -- incidents ---------------------------------------------------------------------------

START, END = T0 + 3600_000, T0 + 3600_000 + 10 * MIN


@pytest.mark.parametrize("kind", ["ddos_burst", "link_down", "latency_spike", "slow_exfiltration",
                                  "counter_reset", "sensor_stuck"])
def test_each_incident_kind_changes_its_metrics_inside_its_span_only(kind):
    cfg = config()
    inc = Incident("r1", kind, START, END)
    hit, base = sim(cfg, devices=["r1"], seed=5, incidents=[inc]), sim(cfg, devices=["r1"], seed=5)
    raw = hit.fetch(["r1"], T0, T0 + 2 * 3600_000).samples
    res, ref = validate(raw, cfg), validate(base.fetch(["r1"], T0, T0 + 2 * 3600_000).samples, cfg)
    ts = ms(raw)
    inside = (ts > START) & (ts <= (START + 10_000 if kind == "counter_reset" else END))
    assert (raw["label"].to_numpy() == inside).all()
    got, want = res.accepted, ref.accepted
    # Outside, the same rates (give or take whole counter units); only the first interval
    # after a link comes back differs, by the noise of its frozen start.
    after = ts == END + 10_000
    outside = ~inside & ~after if kind == "link_down" else ~inside
    pd.testing.assert_frame_equal(got[outside], want[outside], rtol=1e-6, atol=0.2, check_dtype=False)
    np.testing.assert_allclose(got.loc[after, TRAFFIC], want.loc[after, TRAFFIC], rtol=0.25)
    (truth,) = hit.incidents_between(T0, T0 + DAY_MS)
    assert (truth.start_ms, truth.kind) == (START, kind) and truth.metrics
    changed = {m for m in cfg.metrics if not np.allclose(got.loc[inside, m], want.loc[inside, m],
                                                         rtol=1e-6, equal_nan=True)}
    assert changed == set(truth.metrics)
    g, w = got[inside], want[inside]
    if kind == "ddos_burst":
        assert 17 < (g["bytes_in"] / w["bytes_in"]).mean() < 23
        assert (g["packets_in"] / w["packets_in"]).mean() > 40  # small packets
    elif kind == "link_down":
        assert (g[TRAFFIC] == 0).all().all() and g["latency"].isna().all()
    elif kind == "latency_spike":
        np.testing.assert_allclose(g["latency"] / w["latency"], 10.0)
    elif kind == "sensor_stuck":
        at_start = want.loc[ts == START, "latency"].item()
        assert (g["latency"] == at_start).all()
    elif kind == "slow_exfiltration":
        extra = g["bytes_out"] - w["bytes_out"]
        assert extra.is_monotonic_increasing and extra.iloc[0] > 0
        relative = extra / w["bytes_out"]
        assert relative.iloc[0] < 0.3 and 1.5 < relative.iloc[-1] < 4.5  # magnitude 3 x base
    else:
        assert all(res.repaired_counts[f"counter_reset:{m}"] == 1 for m in TRAFFIC)
        assert (g[TRAFFIC] > 0).all().all()


def test_random_incidents_are_ground_truth_and_counters_stay_consistent_across_days():
    cfg = config(sample_interval_s=60)
    src = sim(cfg, devices=6, seed=11, incident_rate_per_device_day=4.0)
    since, until = T0 + DAY_MS // 2, T0 + 2 * DAY_MS + DAY_MS // 2
    raw = src.fetch(src.devices(), since, until).samples
    truth = src.incidents_between(since, until)
    assert len({x.kind for x in truth}) == 6 and all(since < x.end_ms and x.start_ms < until for x in truth)
    ts = ms(raw)
    label = np.zeros(len(raw), bool)
    for x in truth:
        label |= (raw["device_id"].to_numpy() == x.device_id) & (ts > x.start_ms) & (ts <= x.end_ms)
    assert (raw["label"].to_numpy() == label).all()
    res = validate(raw, cfg)
    resets = sum(x.kind == "counter_reset" and x.start_ms > since for x in truth)
    assert res.repaired_counts["counter_reset:bytes_in"] == resets > 0
    calm = res.accepted[res.accepted["label"] == 0]  # no spikes from the sums carried over days
    for _, rates in calm.groupby("device_id"):
        ratio = rates["bytes_in"].dropna() / rates["bytes_in"].median()
        assert ratio.between(0.3, 3).all()


def test_incident_to_dict_round_trips_and_dicts_are_accepted():
    inc = Incident("r1", "latency_spike", START, END, ["latency"], 4.0)
    assert Incident.from_dict(inc.to_dict()) == inc
    unset = Incident("r1", "ddos_burst", END + 5, END + MIN, [], 0.0)
    src = sim(devices=["r1"], incidents=[inc.to_dict(), unset])
    ddos = Incident("r1", "ddos_burst", END, END + MIN, ["bytes_in", "packets_in"], 20.0)  # snapped, defaults
    assert src.incidents_between(T0, T0 + DAY_MS) == [inc, ddos]


# -- bad input ---------------------------------------------------------------------------

def test_injected_garbage_matches_what_the_validator_reports():
    cfg = config()
    src = sim(cfg, devices=5, seed=3, garbage_rate=0.05)
    since, until = T0, T0 + 2 * 3600_000
    raw = src.fetch(src.devices(), since, until).samples
    injected = src.garbage_between(since, until, src.devices())
    assert {k.split(":")[0] for k in injected} == {"metric_missing", "metric_non_numeric", "metric_negative",
                                                   "future_timestamp", "duplicate"}
    res = validate(raw, cfg, now_ms=until)
    reported = res.repaired_counts + res.rejected_counts
    for reason, n in injected.items():
        assert reported[reason] == n, reason
    assert set(res.rejected_counts) == {"future_timestamp", "duplicate"}
    assert raw["bytes_in"].map(lambda v: v == "n/a").sum() == injected["metric_non_numeric:bytes_in"]


def test_a_vanished_device_stops_and_the_others_go_on():
    vanish_at = T0 + 30 * MIN
    src = sim(devices=3, vanish={"dev-0001": vanish_at})
    s = src.fetch(src.devices(), T0, T0 + 3600_000).samples
    gone = s[s["device_id"] == "dev-0001"]["timestamp"]
    assert gone.max() == pd.Timestamp(vanish_at, unit="ms", tz="UTC")
    assert (s["device_id"] == "dev-0000").sum() == 360
    assert src.fetch(["dev-0001"], vanish_at, T0 + 3600_000).samples.empty


def test_failed_devices_are_reported_and_the_others_still_arrive():
    src = sim(devices=20, fail_rate=0.5)
    r = src.fetch(src.devices(), T0, T0 + MIN)
    assert 0 < len(r.failed) < 20
    assert set(r.samples["device_id"]) == set(src.devices()) - set(r.failed)
    assert all("fail_rate" in msg for msg in r.failed.values())
    assert src.fetch(src.devices(), T0, T0 + MIN).failed == r.failed  # the same call, the same way
    retry = src.fetch(sorted(r.failed), T0, T0 + 2 * MIN)  # a retry asks for more, and draws again
    assert len(retry.samples) > 0 and set(retry.failed) < set(r.failed)
    assert src.fetch(["nope", "dev-0000"], T0, T0 + MIN).failed.get("nope", "").startswith("simulated fleet")


@pytest.mark.parametrize(("options", "message"), [
    ({"devices": 0}, "devices must be >= 1, got 0"),
    ({"devices": ["a", "a"]}, "devices must be a count >= 1 or a list of unique"),
    ({"garbage_rate": 1.5}, "garbage_rate must be in [0, 1], got 1.5"),
    ({"fail_rate": -0.1}, "fail_rate must be in [0, 1], got -0.1"),
    ({"speed": 0}, "speed must be > 0, got 0"),
    ({"speed": math.inf}, "speed must be > 0, got inf"),
    ({"seed": "x"}, "seed must be an integer, got 'x'"),
    ({"incident_rate_per_device_day": 100}, "incident_rate_per_device_day must be in [0, 16], got 100"),
    ({"vanish": {"nope": 5}}, "vanish must map known device ids to epoch ms, got 'nope': 5"),
    ({"incidents": [Incident("nope", "ddos_burst", START, END)]}, "unknown device 'nope'"),
    ({"incidents": [Incident("dev-0000", "meteor", START, END)]}, "unknown kind 'meteor'"),
    ({"incidents": [Incident("dev-0000", "ddos_burst", END, START)]}, "must be after start_ms"),
    ({"incidents": [Incident("dev-0000", "ddos_burst", START, END, [], -2)]},
     "magnitude must be > 0, got -2"),
    ({"incidents": [Incident("dev-0000", "ddos_burst", START, END, ["latency"])]}, "metrics ['latency']"),
    ({"incidents": [Incident("dev-0000", "link_down", START, END),
                    Incident("dev-0000", "latency_spike", END - MIN, END + MIN)]}, "overlaps latency_spike"),
])
def test_invalid_options_are_named(options, message):
    with pytest.raises(SourceError, match=re.escape(message)) as info:
        sim(**options)
    assert info.value.source == "simulated"


def test_build_source_names_unknown_kinds_and_options():
    cfg = config()
    assert isinstance(build_source("simulated", cfg, devices=2, start_ms=LATER), SimulatedSource)
    with pytest.raises(SourceError, match=r"unknown source kind 'snmpp'; choose one of simulated, replay"):
        build_source("snmpp", cfg)
    with pytest.raises(SourceError, match=r"no option\(s\) \['devcies'\]"):
        build_source("simulated", cfg, devcies=3)


# -- replay ------------------------------------------------------------------------------

SMD_METRICS = [f"m{i:02d}" for i in range(38)]


@pytest.fixture(scope="module")
def smd_file() -> pd.DataFrame:
    frame = pd.read_csv(SMD)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def test_replay_returns_exactly_the_file_rows_in_range(smd_file):
    cfg = config(metrics=SMD_METRICS, counter_metrics=[])
    src = build_source("replay", cfg, paths=[str(SMD)], device_ids=["machine-1-6"], speed=math.inf)
    assert isinstance(src, Source) and src.devices() == ["machine-1-6"] and src.interval_s == 60.0
    first = smd_file["timestamp"].iloc[0]
    since, until = first + pd.Timedelta(minutes=100), first + pd.Timedelta(minutes=400, seconds=30)
    ms = int(since.value // 10**6)
    got = src.fetch(["machine-1-6"], ms, int(until.value // 10**6)).samples
    want = smd_file[(smd_file["timestamp"] > since) & (smd_file["timestamp"] <= until)]
    assert len(got) == 300
    np.testing.assert_array_equal(got[SMD_METRICS].to_numpy(float), want[SMD_METRICS].to_numpy(float))
    assert (got["timestamp"].to_numpy() == want["timestamp"].to_numpy()).all()
    assert (got["label"].to_numpy() == want["label"].to_numpy()).all()
    assert len(src.fetch(["machine-1-6"], 0, 2**62).samples) == len(smd_file)


def test_replay_clock_runs_at_speed_from_the_first_sample(smd_file):
    cfg = config(metrics=SMD_METRICS, counter_metrics=[])
    src = ReplaySource(cfg, [SMD], speed=60.0, origin_wall_s=1000.0, clock=lambda: 1060.0)
    first_ms = int(smd_file["timestamp"].iloc[0].value // 10**6)
    assert src.devices() == ["test"] and src.now_ms() == first_ms + 3600_000
    assert len(src.fetch(["test"], 0, 2**62).samples) == 61  # one an hour's minutes, both ends


def test_replay_missing_metric_names_the_file_and_metric():
    with pytest.raises(SourceError, match=r"test\.csv\.gz lacks configured metric column\(s\) \['bytes_in'"):
        ReplaySource(config(metrics=["m00", "bytes_in"], counter_metrics=["bytes_in"]), [SMD])


def _write(tmp_path: Path) -> pd.DataFrame:
    frame = pd.DataFrame({
        "device_id": ["b", "a", "b", "a", "b"],
        "timestamp": ["2025-03-01T00:00:20Z", "2025-03-01T00:00:10Z", "2025-03-01T00:00:10Z",
                      "2025-03-01T00:00:20Z", "2025-03-01T00:00:30Z"],
        "bytes_in": [5, 1, 4, 2, "n/a"], "latency": [0.5, 0.1, 0.4, 0.2, 0.6], "extra": 9})
    frame.to_csv(tmp_path / "fleet.csv", index=False)
    frame.assign(bytes_in=pd.to_numeric(frame["bytes_in"], errors="coerce"),
                 timestamp=pd.to_datetime(frame["timestamp"])).to_parquet(tmp_path / "fleet.parquet")
    return frame


@pytest.mark.parametrize("name", ["fleet.csv", "fleet.parquet"])
def test_replay_file_with_device_column_holds_many_devices(tmp_path, name):
    _write(tmp_path)
    cfg = config(metrics=["bytes_in", "latency"], counter_metrics=["bytes_in"])
    src = ReplaySource(cfg, [tmp_path / name], speed=math.inf)
    assert src.devices() == ["b", "a"] and src.interval_s == 10.0
    b = src.fetch(["b"], T0 + 10_000, T0 + 30_000).samples
    assert b["latency"].tolist() == [0.5, 0.6]
    assert list(b.columns) == ["device_id", "timestamp", "bytes_in", "latency"]
    assert src.fetch(["a", "zz"], T0, T0 + MIN).failed == {"zz": "replay has no device 'zz'"}
    assert src.fetch(["a"], T0, T0 + MIN).samples["bytes_in"].tolist() == [1, 2]


def test_replay_loops_with_shifted_timestamps(tmp_path):
    _write(tmp_path)
    cfg = config(metrics=["latency"], counter_metrics=[])
    src = ReplaySource(cfg, [tmp_path / "fleet.csv"], origin_wall_s=0.0, loop=True, clock=lambda: 60.0)
    a = src.fetch(["a"], T0, src.now_ms()).samples  # 20 s of data per 30 s round, for 60 s
    assert (ms(a) - T0).tolist() == [10_000, 20_000, 40_000, 50_000, 70_000]


@pytest.mark.parametrize(("setup", "message"), [
    (lambda p: p / "none.csv", "none.csv: no such file"),
    (lambda p: (p / "x.csv").write_text("a,b\n1,2\n") and p / "x.csv", "no 'timestamp' column"),
    (lambda p: (p / "x.csv").write_text("timestamp,bytes_in\n") and p / "x.csv",
     "x.csv: has a header but no rows"),
    (lambda p: (p / "x.csv").write_text("timestamp,bytes_in\n2025-01-01,1\nsoon,2\n") and p / "x.csv",
     "x.csv: column 'timestamp' line 3 holds 'soon'"),
])
def test_replay_unreadable_files_are_named(tmp_path, setup, message):
    with pytest.raises(SourceError, match=re.escape(message)):
        ReplaySource(config(metrics=["bytes_in"], counter_metrics=[]), [setup(tmp_path)])


def test_replay_needs_distinct_device_ids_and_a_positive_speed(tmp_path):
    cfg = config(metrics=SMD_METRICS, counter_metrics=[])
    other = SMD.parent.parent / "machine-1-7" / "test.csv.gz"
    with pytest.raises(SourceError, match="would both be device 'test'; pass device_ids"):
        ReplaySource(cfg, [SMD, other])
    with pytest.raises(SourceError, match="speed must be > 0, got -1"):
        ReplaySource(cfg, [SMD], speed=-1)
