"""Fitting device by device (eyenet.detection.fit_by_device, jobs.train_store) gives what
Detector.prepare / finish give on the same history as one frame, and reads one device at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from eyenet.config import EyeNetConfig
from eyenet.detection.detector import Detector
from eyenet.detection.fit_by_device import DeviceFit, calibrate_by_device
from eyenet.detection.training import FitResult, build_net, seed_everything
from eyenet.store import open_store
from eyenet.store.base import Event
from jobs.train import flag_incidents
from jobs.train_store import prepare_from_store

METRICS = ["bytes_in", "packets_in", "latency"]


def history() -> pd.DataFrame:
    """Three devices: two long ones (their own scale), a short one (the fleet's scale), a
    gap, missing values and a labelled incident."""
    rng = np.random.default_rng(7)
    frames = []
    for d, rows in (("dev-a", 400), ("dev-b", 300), ("dev-c", 40)):
        t = np.arange(rows)
        base = 1 + np.sin(2 * np.pi * t / 50) * (1 + len(frames))
        ts = pd.date_range("2026-01-01", periods=rows, freq="1s", tz="UTC")
        if d == "dev-b":
            ts = ts.where(t < 150, ts + pd.Timedelta(seconds=30))  # a gap: a new segment
        frame = pd.DataFrame({"device_id": d, "timestamp": ts,
                              "bytes_in": 1e6 * base + 1e4 * rng.standard_normal(rows),
                              "packets_in": 1e3 * base + 10 * rng.standard_normal(rows),
                              "latency": 5 + rng.standard_normal(rows), "label": 0})
        frame.loc[5, "latency"] = np.nan
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out.loc[(out["device_id"] == "dev-a") & out.index.isin(range(100, 104)), "label"] = 1
    return out.sample(frac=1.0, random_state=0).reset_index(drop=True)  # order must not matter


def config(**detector: Any) -> EyeNetConfig:
    return EyeNetConfig(metrics=METRICS, counter_metrics=[],
                        detector={"hidden_size": 8, "num_layers": 1, "window_steps": 8, "learn_s": 120,
                                  "rolling_s": 10, **detector})


def by_device(cfg: EyeNetConfig, frame: pd.DataFrame, **kw: Any) -> tuple[Detector, DeviceFit]:
    detector = Detector(cfg.detector, cfg.metrics, cfg.gap_s)
    fit = DeviceFit(detector, **kw)
    parts = {d: g for d, g in frame.groupby("device_id")}
    for device_id in sorted(parts):
        fit.add(device_id, parts[device_id])
    fit.finish(lambda d: parts[d])
    return detector, fit


def assert_scalers_equal(a: Any, b: Any) -> None:
    np.testing.assert_allclose(a.center, b.center, rtol=1e-6)
    np.testing.assert_allclose(a.scale, b.scale, rtol=1e-6)


def test_device_by_device_fit_equals_the_frame_fit():
    cfg, frame = config(), history()
    whole = Detector(cfg.detector, cfg.metrics, cfg.gap_s)
    data = whole.prepare(frame)
    parts, fit = by_device(cfg, frame)
    assert parts.feature_names == whole.feature_names
    assert parts.scaling.fleet_scaled == whole.scaling.fleet_scaled == ["dev-c"]
    assert sorted(parts.scaling.devices) == sorted(whole.scaling.devices) == ["dev-a", "dev-b"]
    assert_scalers_equal(parts.scaling.fleet, whole.scaling.fleet)
    for d in whole.scaling.devices:
        assert_scalers_equal(parts.scaling.devices[d], whole.scaling.devices[d])
    np.testing.assert_array_equal(parts.scaling.log_features, whole.scaling.log_features)
    np.testing.assert_allclose(parts.regime_reference, whole.regime_reference, rtol=1e-9)
    assert parts.sample_interval_s == whole.sample_interval_s
    assert parts.reference.keys() == whole.reference.keys()
    for name, ref in whole.reference.items():
        for key, value in ref.items():
            np.testing.assert_allclose(parts.reference[name][key], value, rtol=1e-9, err_msg=f"{name}.{key}")
    assert sum(s.train_windows for s in fit.splits) == len(data.train_targets)
    assert sum(s.val_windows for s in fit.splits) == len(data.val_targets)
    assert fit.flagged_rows == int(data.features.flagged.sum()) == 4


def test_calibration_device_by_device_equals_finish():
    cfg, frame = config(), history()
    whole = Detector(cfg.detector, cfg.metrics, cfg.gap_s)
    data = whole.prepare(frame)
    seed_everything(0)
    result = FitResult(build_net(cfg.detector, len(whole.feature_names)).state_dict(), [{"epoch": 0}], 0, 1.0)
    whole.finish(result, data)
    parts, fit = by_device(cfg, frame)
    groups = {d: g for d, g in frame.groupby("device_id")}
    calibrate_by_device(parts, result, fit.splits, lambda d: groups[d], fit.flagged_rows)
    for key, value in whole.calibrator.to_dict().items():
        np.testing.assert_allclose(parts.calibrator.to_dict()[key], value, rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(parts.error_prior, whole.error_prior, rtol=1e-6)
    assert parts.rule.devices.keys() == whole.rule.devices.keys()
    for device, threshold in whole.rule.devices.items():
        assert parts.rule.devices[device] == pytest.approx(threshold, rel=1e-6)
    assert parts.training["val_windows"] == whole.training["val_windows"]
    assert parts.training["excluded_flagged_rows"] == whole.training["excluded_flagged_rows"]
    assert parts.score(frame)["score"].to_numpy() == pytest.approx(whole.score(frame)["score"].to_numpy())


def test_a_fleet_larger_than_the_sample_keeps_exact_moments():
    cfg, frame = config(), history()
    whole = Detector(cfg.detector, cfg.metrics, cfg.gap_s)
    whole.prepare(frame)
    parts, _ = by_device(cfg, frame, sample_rows=50)
    np.testing.assert_allclose(parts.scaling.fleet.scale, whole.scaling.fleet.scale, rtol=1e-6)
    for name, ref in whole.reference.items():
        for key in ("mean", "std", "min", "max"):
            assert parts.reference[name][key] == pytest.approx(ref[key], rel=1e-6), f"{name}.{key}"
    # the median comes from 50 of ~740 rows: near, not equal
    spread = whole.scaling.fleet.scale
    assert np.all(np.abs(parts.scaling.fleet.center - whole.scaling.fleet.center) < spread)


class RecordingStore:
    """A store that records the devices each telemetry read names."""

    def __init__(self, store: Any) -> None:
        self.store, self.reads = store, []

    def read_range(self, start: Any = None, end: Any = None, device_ids: Any = None) -> pd.DataFrame:
        self.reads.append(None if device_ids is None else list(device_ids))
        return self.store.read_range(start, end, device_ids=device_ids)

    def iter_range(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the driver must read device by device, not iterate the fleet")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_store_driver_reads_one_device_at_a_time_and_flags_incidents(tmp_path):
    cfg, frame = config(), history()
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.write_samples(frame.drop(columns="label"))
    at = pd.Timestamp("2026-01-01T00:03:20Z")
    store.upsert_event(Event(kind="anomaly", message="known incident", device_id="dev-b", ts=at))
    recording = RecordingStore(store)
    detector = Detector(cfg.detector, cfg.metrics, cfg.gap_s)
    plan = prepare_from_store(recording, detector, cfg)
    seed_everything(0)
    result = FitResult(build_net(cfg.detector, len(detector.feature_names)).state_dict(), [], 0, 1.0)
    calibrate_by_device(detector, result, plan.splits, plan.read_device, plan.fit.flagged_rows)
    assert recording.reads and all(r is not None and len(r) == 1 for r in recording.reads)
    assert {r[0] for r in recording.reads} == {"dev-a", "dev-b", "dev-c"}
    assert detector.training["excluded_flagged_rows"] == 1
    # the same history as one frame, incidents flagged by the frame path, fits the same
    flagged = flag_incidents(store.read_range(), store.list_events(kind="anomaly"),
                             tolerance_s=cfg.sample_interval_s / 2)
    whole = Detector(cfg.detector, cfg.metrics, cfg.gap_s)
    data = whole.prepare(flagged)
    assert int(data.features.flagged.sum()) == 1
    assert_scalers_equal(detector.scaling.fleet, whole.scaling.fleet)
    np.testing.assert_allclose(detector.regime_reference, whole.regime_reference, rtol=1e-9)


def test_devices_out_of_order_are_refused():
    cfg, frame = config(), history()
    fit = DeviceFit(Detector(cfg.detector, cfg.metrics, cfg.gap_s))
    fit.add("dev-b", frame[frame["device_id"] == "dev-b"])
    with pytest.raises(Exception, match="increasing id order"):
        fit.add("dev-a", frame[frame["device_id"] == "dev-a"])


def test_the_train_job_from_the_store_reads_device_by_device_until_ray_starts(tmp_path, monkeypatch):
    """``eyenet train --from-store`` itself: before Ray starts, no read names the whole fleet
    (it used to read the fleet's history as one frame)."""
    import jobs._ray
    import jobs.train
    from jobs.options import TrainOptions

    class RayStarts(Exception):
        pass

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise RayStarts

    uri = f"sqlite:///{tmp_path}/s.db"
    store = open_store(uri)
    store.write_samples(history().drop(columns="label"))
    recording = RecordingStore(store)
    monkeypatch.setattr(jobs.train, "open_store", lambda _uri: recording)
    monkeypatch.setattr(jobs._ray, "ensure_ray", no_ray)
    cfg = EyeNetConfig.from_dict({**config().to_dict(), "store_uri": uri,
                                  "artifact_root": str(tmp_path / "artifacts")})
    with pytest.raises(RayStarts):
        jobs.train.run_train(cfg, TrainOptions(from_store=True))
    assert recording.reads and all(r is not None and len(r) == 1 for r in recording.reads), recording.reads
