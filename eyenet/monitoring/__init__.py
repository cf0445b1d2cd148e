"""Monitoring: prediction latency, feature drift, alert rules and delivery, snapshots and reports."""
