"""Ray job entry points (``python -m jobs.NAME`` under ``ray job submit``)."""
