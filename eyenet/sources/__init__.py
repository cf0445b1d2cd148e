"""Sources of telemetry: the interface collectors poll, replay of recorded files, and
the simulated fleet with its incidents."""
