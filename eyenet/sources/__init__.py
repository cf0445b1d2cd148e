"""Sources of telemetry: the interface collectors poll, replay of recorded files, the simulated fleet and its incidents."""
