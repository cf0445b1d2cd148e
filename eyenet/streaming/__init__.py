"""Streaming: the collector and live-scorer cores that the Ray actors wrap."""
