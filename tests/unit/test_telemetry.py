"""Each validation rule in eyenet.telemetry: repaired and counted, or rejected and counted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.errors import TelemetryError
from eyenet.telemetry.schema import parse_timestamps
from eyenet.telemetry.validation import DeviceState, TelemetryValidator

NOW = 2_000_000_000.0
T = 1_900_000_000


def sample(ts, device="r1", bi=0.0, bo=0.0, pi=0.0, po=0.0, lat=1.0, **extra):
    return {"device_id": device, "timestamp": ts, "bytes_in": bi, "bytes_out": bo,
            "packets_in": pi, "packets_out": po, "latency": lat, **extra}


def validator(**config) -> TelemetryValidator:
    return TelemetryValidator(EyeNetConfig(**config), now_s=lambda: NOW)


def counters(ts, device="r1", c=0.0, lat=1.0):
    return sample(ts, device, bi=c, bo=c, pi=c, po=c, lat=lat)


def test_counters_become_per_second_rates_after_a_baseline():
    v = validator()
    r = v.validate([counters(T, c=1000), counters(T + 2, c=3000), counters(T + 3, c=3500)])
    assert r.accepted["bytes_in"].tolist()[1:] == [1000.0, 500.0]
    assert np.isnan(r.accepted["bytes_in"].iloc[0])
    assert r.repaired_counts["counter_baseline:bytes_in"] == 1
    assert r.accepted["latency"].tolist() == [1.0, 1.0, 1.0]  # gauges pass through
    assert r.n_rejected == 0


def test_rates_continue_across_batches():
    v = validator()
    v.validate([counters(T, c=100)])
    r = v.validate([counters(T + 1, c=400)])
    assert r.accepted["bytes_in"].tolist() == [300.0]


def test_32_bit_wrap_is_repaired():
    v = validator(counter_bits=32)
    r = v.validate([counters(T, c=2**32 - 100), counters(T + 1, c=50)])
    assert r.accepted["bytes_in"].iloc[1] == 150.0
    assert r.repaired_counts["counter_wrap:bytes_in"] == 1


def test_64_bit_wrap_is_repaired():
    v = validator(counter_bits=64)
    r = v.validate([counters(T, c=2.0**64 - 4096), counters(T + 1, c=4096)])
    assert r.accepted["bytes_in"].iloc[1] == pytest.approx(8192, abs=4096)
    assert r.repaired_counts["counter_wrap:bytes_in"] == 1


def test_reset_counts_from_zero():
    v = validator(counter_bits=64)
    r = v.validate([counters(T, c=5_000_000), counters(T + 2, c=600)])
    assert r.accepted["bytes_in"].iloc[1] == 300.0
    assert r.repaired_counts["counter_reset:bytes_in"] == 1
    assert "counter_wrap:bytes_in" not in r.repaired_counts


def test_implausible_32_bit_wrap_is_a_reset():
    # packets 1 -> 0 in one second would be 4.3e9 packets/s as a wrap: above the packet bound.
    v = validator(counter_bits=32)
    r = v.validate([counters(T, c=1), counters(T + 1, c=0)])
    assert r.repaired_counts["counter_reset:packets_in"] == 1
    assert r.accepted["packets_in"].iloc[1] == 0.0


def test_gap_rebaselines_counters():
    v = validator(sample_interval_s=1)
    r = v.validate([counters(T, c=100), counters(T + 60, c=200), counters(T + 61, c=260)])
    assert r.repaired_counts["gap"] == 1
    assert r.repaired_counts["counter_gap:bytes_in"] == 1
    assert np.isnan(r.accepted["bytes_in"].iloc[1])
    assert r.accepted["bytes_in"].iloc[2] == 60.0


@pytest.mark.parametrize("value, reason", [
    (float("nan"), "metric_missing"), (None, "metric_missing"), ("fast", "metric_non_numeric"),
    (float("inf"), "metric_inf"), (-3.0, "metric_negative"), (4e6, "metric_absurd"),
])
def test_bad_gauge_values_are_set_missing_and_counted(value, reason):
    r = validator().validate([sample(T, lat=value)])
    assert r.n_accepted == 1
    assert np.isnan(r.accepted["latency"].iloc[0])
    assert r.repaired_counts[f"{reason}:latency"] == 1


def test_absurd_counter_rate_is_set_missing():
    v = validator(metric_max={"bytes_in": 1000})
    r = v.validate([counters(T, c=0), counters(T + 1, c=5000)])
    assert np.isnan(r.accepted["bytes_in"].iloc[1])
    assert r.repaired_counts["metric_absurd:bytes_in"] == 1
    assert r.accepted["bytes_out"].iloc[1] == 5000


def test_sample_with_no_valid_metric_is_rejected():
    r = validator().validate([{"device_id": "r1", "timestamp": T, "bytes_in": "x", "latency": -1}])
    assert r.n_accepted == 0
    assert r.rejected_counts == {"no_valid_metrics": 1}


def test_structural_rejects_keep_the_original_row_and_reason():
    rows = [sample(T, device=""), sample("not a time"), sample(NOW + 3600), sample(T, device=None)]
    r = validator().validate(rows)
    assert r.n_accepted == 0
    assert r.rejected["reason"].tolist() == [
        "missing_device_id", "bad_timestamp", "future_timestamp", "missing_device_id"]
    assert r.rejected["timestamp"].tolist()[1] == "not a time"


def test_duplicates_within_and_across_batches():
    v = validator()
    r = v.validate([sample(T, lat=1), sample(T, lat=2), sample(T + 1)])
    assert r.n_accepted == 2 and r.rejected_counts == {"duplicate": 1}
    assert r.accepted["latency"].iloc[0] == 1  # first in arrival order wins
    r = v.validate([sample(T + 1)])
    assert r.rejected_counts == {"duplicate": 1}


def test_out_of_order_batch_is_sorted_before_rates():
    v = validator()
    r = v.validate([counters(T + 2, c=300), counters(T, c=100), counters(T + 1, c=150)])
    assert r.repaired_counts["reordered"] == 2
    assert r.accepted["timestamp"].is_monotonic_increasing
    assert r.accepted["bytes_in"].tolist()[1:] == [50.0, 150.0]


def test_late_samples_kept_without_counter_rate_and_too_late_rejected():
    v = validator(max_lateness_s=60)
    v.validate([counters(T, c=100), counters(T + 100, c=200)])
    r = v.validate([counters(T + 90, c=190, lat=7), counters(T + 10, c=110)])
    assert r.repaired_counts["late"] == 1
    assert r.repaired_counts["late_counter:bytes_in"] == 1
    assert r.accepted["latency"].tolist() == [7.0]
    assert np.isnan(r.accepted["bytes_in"].iloc[0])
    assert r.rejected_counts == {"too_late": 1}
    # the rate chain is untouched by the late sample
    assert v.validate([counters(T + 101, c=230)]).accepted["bytes_in"].iloc[0] == 30.0


def test_labels_outside_0_1_are_dropped_and_counted():
    r = validator().validate([sample(T, label=1), sample(T + 1, label=7), sample(T + 2)])
    assert r.accepted["label"].tolist()[0] == 1
    assert r.accepted["label"].isna().tolist()[1:] == [True, True]
    assert r.repaired_counts["bad_label"] == 1


def test_every_input_sample_is_accounted_for():
    rows = [counters(T + i, device=f"d{i % 3}", c=i * 10) for i in range(30)]
    rows += [sample(T, device="d0"), sample("junk"), sample(NOW + 1e6)]
    r = validator().validate(rows)
    assert r.n_accepted + r.n_rejected == len(rows)


def test_many_devices_in_one_batch():
    v = validator()
    frame = pd.DataFrame([counters(T + t, device=f"d{d}", c=t * 100.0) for t in range(3)
                          for d in range(50)])
    r = v.validate(frame)
    assert r.n_accepted == 150
    assert (r.accepted.groupby("device_id")["bytes_in"].apply(lambda s: s.tolist()[1:])
            .map(lambda x: x == [100.0, 100.0])).all()


def test_extra_columns_are_reported_not_silently_used():
    frame = pd.DataFrame([sample(T, hostname="core-1")])
    assert validator().validate(frame).ignored_columns == ["hostname"]


def test_frame_missing_a_metric_column_is_a_clear_error():
    frame = pd.DataFrame([sample(T)]).drop(columns=["latency"])
    with pytest.raises(TelemetryError, match=r"lacks column\(s\) \['latency'\]"):
        validator().validate(frame)


def test_restored_state_continues_the_rate_chain():
    v = validator()
    v.restore("r1", DeviceState(last_ts_ms=T * 1000, counter_raw={"bytes_in": 100.0},
                                counter_ts_ms={"bytes_in": T * 1000}))
    r = v.validate([counters(T + 1, c=150)])
    assert r.accepted["bytes_in"].iloc[0] == 50.0
    assert v.device_state("r1").last_ts_ms == (T + 1) * 1000


def test_timestamps_parse_to_utc():
    parsed = parse_timestamps(pd.Series(["2014-04-10 00:04:00", "2026-01-01T01:00:00+01:00", 0, "x"],
                                        dtype=object))
    assert parsed.tolist()[:3] == [pd.Timestamp("2014-04-10 00:04:00", tz="UTC"),
                                   pd.Timestamp("2026-01-01 00:00:00", tz="UTC"),
                                   pd.Timestamp(0, unit="s", tz="UTC")]
    assert pd.isna(parsed.iloc[3])


def test_a_device_the_source_says_is_32_bit_wraps_at_2_to_the_32_while_others_stay_64_bit():
    v = validator(counter_bits=64)
    batch = [counters(T, "old", c=2**32 - 100), counters(T + 1, "old", c=50),
             counters(T, "new", c=2**32 - 100), counters(T + 1, "new", c=50)]
    r = v.validate(batch, counter_bits={"old": 32})
    rates = r.accepted.set_index("device_id")["bytes_in"].dropna()
    assert rates["old"] == 150.0                      # wrapped at 2**32
    assert rates["new"] == 50.0                       # 64-bit: a decrease that no wrap explains is a reset
    assert r.repaired_counts["counter_wrap:bytes_in"] == 1
    assert r.repaired_counts["counter_reset:bytes_in"] == 1


def test_a_discontinuity_the_source_reports_makes_a_new_baseline_instead_of_a_rate():
    v = validator()
    v.validate([counters(T, c=1000), counters(T + 1, c=2000)])
    # the agent restarted between polls; its counter kept counting (a kernel counter), so a
    # plain delta would look plausible, yet RFC 2863 says no delta across it is trusted
    r = v.validate([counters(T + 2, c=2500), counters(T + 3, c=2600)], discontinuous={"r1"})
    assert np.isnan(r.accepted["bytes_in"].iloc[0])
    assert r.accepted["bytes_in"].iloc[1] == 100.0
    assert r.repaired_counts["counter_discontinuity:bytes_in"] == 1
    assert r.repaired_counts["counter_baseline:bytes_in"] == 0


def test_a_discontinuity_on_a_device_never_seen_is_just_its_baseline():
    r = validator().validate([counters(T, c=10)], discontinuous={"r1"})
    assert r.repaired_counts["counter_baseline:bytes_in"] == 1
    assert r.repaired_counts["counter_discontinuity:bytes_in"] == 0
