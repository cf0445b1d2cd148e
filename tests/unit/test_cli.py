"""The ``eyenet`` command, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eyenet.models.registry import ModelRegistry
from eyenet.store import open_store
from jobs.cli import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EYENET_STORE_URI", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("EYENET_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"w": torch.ones(2)}, model / "weights.pt")
    registry = ModelRegistry(open_store(f"sqlite:///{tmp_path}/cli.db"), tmp_path / "artifacts")
    registry.register(model, metrics={"auprc": 0.5})
    registry.register(model)
    return tmp_path


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("config", "models", "bench"):
        assert command in out


def test_every_command_runs_a_job_module_with_a_main_and_its_own_parser():
    import importlib

    from jobs.cli import BENCHES, COMMANDS

    for name, _, options_cls, job in (*COMMANDS, *BENCHES):
        if name == "config":
            continue
        module = importlib.import_module(job.module)
        assert callable(module.main), job.module
        assert f"job_main({options_cls.__name__}, main" in Path(module.__file__).read_text(), \
            f"python -m {job.module} must parse the same {options_cls.__name__}"


def test_models_list_promote_rollback(env, capsys):
    # these versions are bare weights, not detectors: integrity is all there is to check
    assert main(["models", "promote", "1", "--skip-gate"]) == 0
    assert main(["models", "promote", "2", "--skip-gate"]) == 0
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert [(v["version"], v["state"]) for v in listed] == [(1, "archived"), (2, "production")]
    assert main(["models", "rollback"]) == 0
    assert "v1 is now production" in capsys.readouterr().out
    assert main(["models", "show", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == {"auprc": 0.5}


def test_errors_are_one_line_and_non_zero(env, capsys):
    assert main(["models", "promote", "9"]) == 1
    assert capsys.readouterr().err.strip() == "eyenet: error: model eyenet-detector has no version 9"
    assert main(["models", "promote"]) == 2
    assert "needs a VERSION" in capsys.readouterr().err


def test_bad_config_exits_2_naming_the_field(env, monkeypatch, capsys):
    monkeypatch.setenv("EYENET_SAMPLE_INTERVAL_S", "-1")
    assert main(["config"]) == 2
    assert "sample_interval_s = '-1', from EYENET_SAMPLE_INTERVAL_S" in capsys.readouterr().err


def test_config_prints_the_effective_values(env, capsys):
    assert main(["config", "--store", "sqlite:///elsewhere.db"]) == 0
    out = capsys.readouterr().out
    assert "store_uri: sqlite:///elsewhere.db" in out
    assert "sample_interval_s: 1.0" in out


def test_store_bench_measures_and_reports(capsys, tmp_path):
    assert main(["bench", "store", "--json", "--devices", "20", "--samples", "4000",
                 "--batch-size", "500", "--reads", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bench"] == "store" and result["samples"] == 4000
    assert result["write_samples_per_s"] > 0 and result["bare_sqlite_write_samples_per_s"] > 0
    assert result["window_rows_median"] == 200


@pytest.mark.parametrize("argv, named", [(["--devices", "3"], "--devices"),
                                         (["--seconds", "30"], "--seconds")])
def test_demo_refuses_a_size_that_cannot_show_the_incidents(tmp_path, capsys, argv, named):
    """Checked before anything starts: nothing is created under --dir."""
    assert main(["demo", "--dir", str(tmp_path / "d"), *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("args", "named"), [
    (["--devices", "10", "--train-devices", "20"], "--train-devices"),
    (["--incident-devices", "-1"], "--incident-devices"),
])
def test_bench_fleet_refuses_bad_sizes_before_simulating_anything(env, capsys, args, named):
    assert main(["bench", "fleet", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_the_job_commands_in_cluster_yaml_and_the_readme_parse():
    """The examples users copy must run: each ``python -m jobs.NAME ...`` there is parsed
    and validated with that job's own options (cluster.yaml's ``--gpus 2`` example did not)."""
    import re
    import shlex

    from jobs.cli import build_parser

    repo = Path(__file__).resolve().parents[2]
    text = "\n".join((repo / name).read_text() for name in ("cluster.yaml", "README.md"))
    text = re.sub(r"\\\n#?\s*", " ", text)  # shell line continuations, also inside YAML comments
    commands = re.findall(r"python -m jobs\.([a-z_]+)([^`\n]*)", text)
    assert len(commands) >= 3
    parser = build_parser()
    for name, rest in commands:
        # jobs.tune is the train job with --tune (the CLI has no command of its own for it)
        command = name.split("_", 1) if name.startswith("bench_") else \
            ["train", "--tune"] if name == "tune" else [name]
        args = parser.parse_args([*command, *shlex.split(rest.split("#")[0])])
        args.options_cls.from_namespace(args)  # the options check themselves
