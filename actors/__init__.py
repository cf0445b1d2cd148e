"""Ray actors wrapping the core: device collectors, the feature pool, the monitor.

Each actor is a thin ``ray.remote(**opts)(Cls)`` shell over a plain class in ``eyenet``
that unit tests drive without Ray (see ARCHITECTURE.md).
"""
