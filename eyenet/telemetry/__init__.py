"""Telemetry: the sample schema, timestamps in epoch milliseconds, validation of bad samples, time specs."""
