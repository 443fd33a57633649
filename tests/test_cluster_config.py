"""cluster.yaml is a valid Ray cluster-launcher config that installs rnnimp on every node.

Runs Ray's own checks, offline: ``prepare_config`` (merges the AWS provider's
defaults.yaml shipped with Ray, merges setup commands, checks the docker
section, fills per-type worker counts) and ``validate_config`` (ray-schema.json
plus the launcher's consistency checks). These are the first steps of
``ray up``; the next one, the provider's ``bootstrap_config``, needs boto3 and
AWS credentials (IAM role, AMI, subnets, key pair) and is not exercised here.

``validate_config`` is also run on the raw file: it passes only because
cluster.yaml spells out ``cluster_synced_files`` (Ray treats that field's
absence as "config filled out by an older Ray" and raises RuntimeError).

Ray's offline checks have gaps: ``node_config`` (the EC2 launch parameters)
is free-form, and a node type's ``min_workers`` above its own ``max_workers``
is accepted; test_worker_pool_is_fixed_size covers the latter for this file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
MOUNT = "~/rnnimp"


@pytest.fixture(scope="module")
def raw_config() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def ray_validate(config: dict) -> dict:
    """What ``ray up`` does before contacting the cloud; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_validation(raw_config):
    prepared = ray_validate(raw_config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_raw_cluster_yaml_passes_validate_config(raw_config):
    validate_config(copy.deepcopy(raw_config))


def test_worker_pool_is_fixed_size(raw_config):
    # rnnimp sizes its actor pool from the CPUs present when the job starts,
    # so worker nodes must be up front, not autoscaled from zero.
    prepared = ray_validate(raw_config)
    workers = {
        name: spec for name, spec in prepared["available_node_types"].items()
        if name != prepared["head_node_type"]
    }
    assert workers, "cluster.yaml defines no worker node type"
    assert sum(spec["min_workers"] for spec in workers.values()) == prepared["max_workers"]
    for name, spec in workers.items():
        assert spec["min_workers"] == spec["max_workers"] >= 1, name
        assert "GPU" not in spec["resources"], name
        assert not spec["node_config"]["InstanceType"].startswith(("p", "g")), name


def test_setup_commands_install_the_mounted_project_on_every_node(raw_config):
    assert raw_config["file_mounts"][MOUNT] == "."
    assert (ROOT / raw_config["file_mounts"][MOUNT] / "pyproject.toml").is_file()
    prepared = ray_validate(raw_config)
    # prepare_config prepends the shared setup_commands to both lists, which is
    # what head and worker nodes actually run.
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [
            command for command in prepared[key]
            if "pip install" in command and MOUNT in command
        ]
        assert installs, f"no `pip install {MOUNT}` in {key}: {prepared[key]}"


def test_rsync_skips_the_virtualenv(raw_config):
    # file_mounts "." would otherwise copy the multi-GiB .venv to every node.
    assert ".gitignore" in raw_config["rsync_filter"]
    assert ".venv" in (ROOT / ".gitignore").read_text()


def test_ray_versions_agree(raw_config):
    image_version = re.fullmatch(
        r"rayproject/ray:(\d+\.\d+\.\d+)-py\d+-cpu", raw_config["docker"]["image"]
    ).group(1)
    pins = {
        match for command in raw_config["setup_commands"]
        for match in re.findall(r"ray\[default\]==([\w.]+)", command)
    }
    assert pins == {image_version}
    local = ".".join(ray.__version__.split(".")[:2])
    assert image_version.rsplit(".", 1)[0] == local, (
        f"cluster image has ray {image_version}, this machine ray {ray.__version__}: "
        "the launcher needs matching versions"
    )


def _without(key):
    def mutate(config):
        del config[key]
    return mutate


def _set(key, value):
    def mutate(config):
        config[key] = value
    return mutate


def _set_worker(key, value):
    def mutate(config):
        config["available_node_types"]["ray.worker.cpu"][key] = value
    return mutate


def _without_worker(key):
    def mutate(config):
        del config["available_node_types"]["ray.worker.cpu"][key]
    return mutate


def _set_docker(key, value):
    def mutate(config):
        config["docker"][key] = value
    return mutate


def _without_docker(key):
    def mutate(config):
        del config["docker"][key]
    return mutate


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        # prepare_config reads config["provider"] before any schema check.
        pytest.param(_without("provider"), (KeyError, jsonschema.ValidationError), "provider",
                     id="missing provider"),
        pytest.param(_set("max_workers", "two"), jsonschema.ValidationError, "is not of type 'integer'",
                     id="max_workers not an integer"),
        pytest.param(_set("max_workers", -1), jsonschema.ValidationError, "less than the minimum",
                     id="max_workers negative"),
        pytest.param(_set("setup_command", []), jsonschema.ValidationError, "'setup_command' was unexpected",
                     id="misspelt top-level key"),
        # merge_setup_commands concatenates lists before the schema runs.
        pytest.param(_set("setup_commands", "pip install -e ~/rnnimp"), TypeError, "concatenate",
                     id="setup_commands not a list"),
        pytest.param(_set("head_node_type", "ray.head.missing"), ValueError, "head_node_type",
                     id="unknown head node type"),
        pytest.param(_set_worker("min_workers", 5), ValueError, "max_workers",
                     id="min_workers above global max_workers"),
        pytest.param(_without_worker("resources"), jsonschema.ValidationError, "'resources' is a required",
                     id="node type without resources"),
        pytest.param(_set_worker("resources", {"CPU": "8"}), jsonschema.ValidationError,
                     "is not of type 'integer'", id="CPU count not an integer"),
        pytest.param(_set_docker("imag", "x"), jsonschema.ValidationError, "'imag' was unexpected",
                     id="unknown docker key"),
        # validate_docker_config (inside prepare_config) uses a bare assert here.
        pytest.param(_without_docker("container_name"), AssertionError, "container",
                     id="docker without container_name"),
    ],
)
def test_broken_configs_are_rejected(raw_config, mutate, error, match):
    broken = copy.deepcopy(raw_config)
    mutate(broken)
    with pytest.raises(error, match=match):
        ray_validate(broken)
