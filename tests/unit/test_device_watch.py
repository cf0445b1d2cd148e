"""The device list reloads from the config file when it changes or on request; a file that
no longer loads leaves the running list as it was."""

from __future__ import annotations

import logging

import yaml

from eyenet.config import load_config
from eyenet.sources.watch import DeviceListWatch


def write(path, devices, **other):
    path.write_text(yaml.safe_dump({"devices": devices, **other}))


def probe(device_id):
    return {"id": device_id, "latency_probe": {"kind": "tcp", "host": "127.0.0.1", "port": 22}}


def test_a_changed_file_gives_the_new_device_list_once(tmp_path):
    path = tmp_path / "eyenet.yaml"
    write(path, [probe("a")])
    watch = DeviceListWatch(load_config(path, env={}), load=lambda p: load_config(p, env={}))
    assert watch.path == path
    assert watch.check() is None                       # nothing changed yet
    write(path, [probe("a"), probe("b")])
    assert [d.id for d in watch.check()] == ["a", "b"]
    assert watch.check() is None                       # reported once


def test_a_request_rereads_but_an_unchanged_list_is_no_change(tmp_path):
    path = tmp_path / "eyenet.yaml"
    write(path, [probe("a")])
    watch = DeviceListWatch(load_config(path, env={}), load=lambda p: load_config(p, env={}))
    reads = []
    watch._load = lambda p: reads.append(p) or load_config(p, env={})
    watch.request()
    assert watch.check() is None and reads == [str(path)]


def test_a_file_that_no_longer_loads_keeps_the_running_list_and_says_why(tmp_path, caplog):
    path = tmp_path / "eyenet.yaml"
    write(path, [probe("a")])
    watch = DeviceListWatch(load_config(path, env={}), load=lambda p: load_config(p, env={}))
    write(path, [probe("a"), {"id": "b", "snmp": {"host": "h", "community_env": "public"}}])
    caplog.set_level(logging.ERROR)
    assert watch.check() is None
    assert "'public' is not an environment variable name" in watch.last_error
    assert "still polling the 1 devices" in caplog.text
    write(path, [probe("a"), probe("b")])               # fixed: the next change goes through
    assert [d.id for d in watch.check()] == ["a", "b"]
    assert watch.last_error is None


def test_other_settings_changed_alongside_are_reported_as_needing_a_restart(tmp_path, caplog):
    path = tmp_path / "eyenet.yaml"
    write(path, [probe("a")])
    watch = DeviceListWatch(load_config(path, env={}), load=lambda p: load_config(p, env={}))
    write(path, [probe("b")], sample_interval_s=5.0)
    caplog.set_level(logging.WARNING)
    assert [d.id for d in watch.check()] == ["b"]
    assert "take effect at the next restart" in caplog.text


def test_a_config_from_no_file_has_nothing_to_watch():
    watch = DeviceListWatch(load_config(None, env={}))
    assert watch.path is None and watch.check() is None
