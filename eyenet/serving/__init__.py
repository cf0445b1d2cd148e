"""Serving: what the HTTP API accepts, checks and answers, without Ray."""
