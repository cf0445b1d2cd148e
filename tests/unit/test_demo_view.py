"""The demo's live view (plain lines and the rich table), summary and plots, without Ray."""

from __future__ import annotations

import io

import pandas as pd

from jobs.demo_scoring import Span, Truth, score_demo
from jobs.demo_view import LiveView, TuneView, plot_device, print_summary

FLEET = ["dev-0000", "dev-0001"]
COMMON = {"state": "judged", "threshold": 0.5, "timestamp": "2026-01-01T00:00:10Z"}
ANSWERS = {"dev-0000": {"anomaly_score": 0.1, "is_anomaly": False, "top_features": ["latency"], **COMMON},
           "dev-0001": {"anomaly_score": 0.93, "is_anomaly": True, "top_features": ["bytes_in"], **COMMON}}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_without_a_terminal_name_the_anomalous_devices():
    out = io.StringIO()
    with LiveView(FLEET, {"dev-0001": "ddos_burst"}, plain=False, out=out) as view:
        assert view.plain  # not a terminal
        view.update(ANSWERS, {"dev-0001": 1}, 12.0)
    line = out.getvalue()
    assert "dev-0001 0.93 bytes_in" in line and "open alerts: dev-0001 (1)" in line and "dev-0000" not in line


def test_a_terminal_gets_the_table():
    out = Tty()
    with LiveView(FLEET, {"dev-0001": "ddos_burst"}, plain=False, out=out) as view:
        assert not view.plain
        view.update(ANSWERS, {"dev-0001": 1}, 12.0)
    text = out.getvalue()
    for word in ("device", "open alerts", "ANOMALY", "ddos_burst", "bytes_in", "0.93"):
        assert word in text


def feed_two_trials(view: TuneView) -> None:
    small, large = {"hidden_size": 16, "learning_rate": 0.002}, {"hidden_size": 32, "learning_rate": 0.005}
    view.on_result("t-a", small, {"epoch": 0, "val_loss": 0.02, "best_val_loss": 0.02})
    view.on_result("t-a", small, {"epoch": 1, "val_loss": 0.01, "best_val_loss": 0.01})
    view.on_result("t-b", large, {"epoch": 0, "val_loss": 0.03, "best_val_loss": 0.03})


def test_tune_progress_plain_lines_and_the_registered_trial_marked():
    out = io.StringIO()
    with TuneView(10, plain=False, out=out) as view:
        assert view.plain
        feed_two_trials(view)
    assert out.getvalue().splitlines()[1] == \
        "    trial 1 hidden_size=16, learning_rate=0.002: epoch 2: val loss 0.0100 (best 0.0100)"
    lines = view.summary_lines({"hidden_size": 16, "learning_rate": 0.002})
    assert lines == [
        "    trial 1 hidden_size=16, learning_rate=0.002: 2 epochs, best val loss 0.0100"
        "  <- best, registered",
        "    trial 2 hidden_size=32, learning_rate=0.005: 1 epochs, best val loss 0.0300"]


def test_a_terminal_gets_a_progress_bar_per_trial(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich ellipsizes to the terminal's width
    out = Tty()
    with TuneView(10, plain=False, out=out) as view:
        feed_two_trials(view)
    text = out.getvalue()
    assert "trial 1 hidden_size=16" in text and "trial 2 hidden_size=32" in text
    assert "2/10" in text and "val loss 0.0100" in text


def test_summary_and_plot(tmp_path):
    truth = Truth("dev-0001", "ddos_burst", 1_767_225_605_000, 1_767_225_615_000)
    span = Span("dev-0001", "anomaly", 1_767_225_606_000, 1_767_225_614_000)
    summary = {**score_demo([truth], [span], FLEET), "wall_s": 100.0, "api_docs_url": "http://h:1/docs",
               "dashboard_url": "http://h:8265", "plots": ["/x/dev-0001.png"], "plot_dir": "/x"}
    for out in (io.StringIO(), Tty()):
        print_summary(summary, plain=False, out=out)
        text = out.getvalue()
        assert "100 %" in text and "http://h:1/docs" in text and "plot: /x/dev-0001.png" in text
    ts = pd.date_range("2026-01-01", periods=30, freq="1s", tz="UTC")
    telemetry = pd.DataFrame({"timestamp": ts, "bytes_in": range(30), "latency": [1.0] * 30})
    path = plot_device(tmp_path / "dev-0001.png", "dev-0001", telemetry, ["bytes_in", "latency"],
                       [ANSWERS["dev-0001"]], [span], [truth])
    assert path.read_bytes()[:4] == b"\x89PNG"
