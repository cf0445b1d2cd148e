"""What the demo shows: the live fleet table, the final summary and one plot per device.

With a terminal (and without ``--plain``) the live phase is a :mod:`rich` table refreshed in
place; otherwise each refresh is one plain line naming the devices that look anomalous or
have open alerts, so logs and CI output stay readable. Plots use matplotlib's Agg backend
(no display needed).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from jobs.demo_scoring import Span, Truth


class TuneView:
    """The Tune search as it runs: a progress bar per trial (epochs done, validation loss)
    refreshed in place, or one plain line per reported epoch. Tune calls :meth:`on_result`
    on the driver."""

    def __init__(self, max_epochs: int, *, plain: bool, out: TextIO | None = None) -> None:
        self.max_epochs = max_epochs
        self.out = out or sys.stdout
        self.plain = plain or not self.out.isatty()
        self.trials: dict[str, dict[str, Any]] = {}  # trial id -> params and latest figures
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> TuneView:
        if not self.plain:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("    {task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("epochs  {task.fields[loss]}"),
                                      console=Console(file=self.out))
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def on_result(self, trial_id: str, params: dict[str, Any], result: dict[str, Any]) -> None:
        row = self.trials.setdefault(trial_id, {"params": params, "number": len(self.trials) + 1})
        row.update(epochs=int(result.get("epoch", -1)) + 1, val_loss=result.get("val_loss"),
                   best_val_loss=result.get("best_val_loss"))
        loss = f"val loss {row['val_loss']:.4f} (best {row['best_val_loss']:.4f})"
        name = f"trial {row['number']} {describe_params(params)}"
        if self._progress is None:
            print(f"    {name}: epoch {row['epochs']}: {loss}", file=self.out, flush=True)
            return
        if trial_id not in self._tasks:
            self._tasks[trial_id] = self._progress.add_task(name, total=self.max_epochs, loss="")
        self._progress.update(self._tasks[trial_id], completed=row["epochs"], loss=loss)

    def summary_lines(self, best: Mapping[str, Any] | None) -> list[str]:
        """One line per trial, the best (the registered one) marked."""
        lines = []
        for row in sorted(self.trials.values(), key=lambda r: r["number"]):
            mark = "  <- best, registered" if best and all(row["params"].get(k) == v
                                                         for k, v in best.items()) else ""
            lines.append(f"    trial {row['number']} {describe_params(row['params'])}: "
                         f"{row['epochs']} epochs, best val loss {row['best_val_loss']:.4f}{mark}")
        return lines


def describe_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class LiveView:
    """The live phase's fleet view, fed one round of /v1/predict answers at a time."""

    def __init__(self, devices: Sequence[str], incidents: Mapping[str, str], *, plain: bool,
                 out: TextIO | None = None) -> None:
        self.devices, self.incidents = list(devices), dict(incidents)
        self.out = out or sys.stdout
        self.plain = plain or not self.out.isatty()
        self._live: Any = None

    def __enter__(self) -> LiveView:
        if not self.plain:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table({}, {}, 0.0), console=Console(file=self.out),
                              refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, answers: Mapping[str, dict[str, Any]], open_alerts: Mapping[str, int],
               elapsed_s: float) -> None:
        if self._live is not None:
            self._live.update(self._table(answers, open_alerts, elapsed_s))
            return
        flagged = [f"{d} {a['anomaly_score']:.2f} {','.join(a['top_features'][:1]) or '-'}"
                   for d, a in answers.items() if a.get("is_anomaly")]
        alerting = [f"{d} ({n})" for d, n in sorted(open_alerts.items()) if n]
        print(f"    [live +{elapsed_s:3.0f} s] {len(answers)}/{len(self.devices)} devices answered; "
              f"anomalous: {'; '.join(flagged) or 'none'}; open alerts: {', '.join(alerting) or 'none'}",
              file=self.out, flush=True)

    def _table(self, answers: Mapping[str, dict[str, Any]], open_alerts: Mapping[str, int],
               elapsed_s: float) -> Any:
        from rich.table import Table

        table = Table(title=f"EyeNet live, +{elapsed_s:.0f} s (injected incidents marked)",
                      title_justify="left")
        for name, justify in (("device", "left"), ("incident", "left"), ("score", "right"),
                              ("state", "left"), ("top metric", "left"), ("open alerts", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for device in self.devices:
            a = answers.get(device)
            alerts = open_alerts.get(device, 0)
            if a is None:
                row = [device, self.incidents.get(device, ""), "-", "waiting", "-", str(alerts)]
            else:
                state = "ANOMALY" if a["is_anomaly"] else a.get("state", "judged")
                row = [device, self.incidents.get(device, ""), f"{a['anomaly_score']:.2f}", state,
                       (a["top_features"] or ["-"])[0], str(alerts)]
            style = "bold red" if (a and a["is_anomaly"]) or alerts else None
            table.add_row(*row, style=style)
        return table


def summary_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The final summary as (figure, value) rows, the same for rich and plain output."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f} %"

    def num(x: float | None, unit: str, fmt: str = ".1f") -> str:
        return "-" if x is None else f"{x:{fmt}} {unit}"

    rows = [("event recall", f"{pct(summary['event_recall'])} "
                             f"({summary['incidents_found']}/{summary['incidents']} incidents)"),
            ("event precision", f"{pct(summary['event_precision'])} "
                                f"({summary['true_anomaly_events']}/{summary['anomaly_events']} events)"),
            ("false alerts on quiet devices",
             f"{summary['false_alerts_on_quiet_devices']} on {len(summary['quiet_devices_alerting'])} of "
             f"{summary['quiet_devices']} quiet devices"
             + (f" ({', '.join(summary['quiet_devices_alerting'])})" if summary["quiet_devices_alerting"]
                else "")),
            ("mean time to detect", num(summary["mean_time_to_detect_s"], "s"))]
    for r in summary["per_incident"]:
        rows.append((f"  {r['kind']} on {r['device_id']}",
                     (f"found after {r['time_to_detect_s']:.0f} s, {r['events']} events, {r['alerts']} "
                      f"alerts, metrics {', '.join(r['metrics']) or '-'}") if r["found"] else "MISSED"))
    rows += [("scoring latency p50 / p99", f"{num(summary.get('latency_p50_ms'), 'ms')} / "
                                           f"{num(summary.get('latency_p99_ms'), 'ms')}"),
             ("drift (overall, worst)", f"{num(summary.get('drift_overall'), '', '.3f')}"
                                        f" {summary.get('drift_worst') or ''}".rstrip()),
             ("API docs", summary.get("api_docs_url") or "-"),
             ("Ray dashboard", summary.get("dashboard_url") or "-"),
             ("plots", f"{len(summary.get('plots', []))} under {summary.get('plot_dir', '-')}"),
             ("wall time", num(summary.get("wall_s"), "s", ".0f"))]
    return rows


def print_summary(summary: Mapping[str, Any], *, plain: bool, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    rows = summary_rows(summary)
    if plain or not out.isatty():
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}", file=out)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="EyeNet demo: measured against the injected incidents", title_justify="left")
        table.add_column("figure")
        table.add_column("value")
        for key, value in rows:
            table.add_row(key, value, style="red" if value == "MISSED" else None)
        Console(file=out).print(table)
    for path in summary.get("plots", []):
        print(f"plot: {path}", file=out)
    out.flush()


def plot_device(path: Path, device: str, telemetry: Any, metrics: Sequence[str],
                answers: Sequence[dict[str, Any]], spans: Sequence[Span], truths: Sequence[Truth]) -> Path:
    """One PNG: the device's telemetry (each metric over its own median), the served score
    and threshold, alert spans (red) and injected incidents (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    if len(telemetry):
        ts = pd.to_datetime(telemetry["timestamp"], utc=True)
        for m in metrics:
            values = pd.to_numeric(telemetry[m], errors="coerce")
            median = values.abs().median()
            top.plot(ts, values / (median if median else 1.0), label=m, linewidth=0.8)
        top.legend(loc="upper left", fontsize=7, ncol=len(metrics))
    top.set_ylabel("telemetry / median")
    if answers:
        at = pd.to_datetime([a["timestamp"] for a in answers], utc=True)
        bottom.plot(at, [a["anomaly_score"] for a in answers], marker=".", label="score (/v1/predict)")
        bottom.plot(at, [a["threshold"] for a in answers], linestyle="--", label="threshold")
        bottom.legend(loc="upper left", fontsize=7)
    bottom.set_ylabel("anomaly score")
    bottom.set_ylim(0, 1.05)
    for axis in (top, bottom):
        for t in truths:
            axis.axvspan(pd.Timestamp(t.start_ms, unit="ms", tz="UTC"),
                         pd.Timestamp(t.end_ms, unit="ms", tz="UTC"), color="grey", alpha=0.2)
        for s in spans:
            axis.axvspan(pd.Timestamp(s.start_ms, unit="ms", tz="UTC"),
                         pd.Timestamp(max(s.end_ms, s.start_ms + 1000), unit="ms", tz="UTC"),
                         color="red", alpha=0.15 if s.is_alert else 0.3)
    kinds = ", ".join(t.kind for t in truths) or "quiet"
    top.set_title(f"{device} ({kinds}): grey = injected incident, red = anomaly events / alerts")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
