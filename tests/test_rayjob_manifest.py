"""rayjob.yaml: a valid KubeRay RayJob (checked offline against the CRD's schema) that runs the main job.

The schema is KubeRay's own, vendored in tests/data/ with its origin and what
was pruned. Validation is in two parts, as in the Kubernetes API server:

- the OpenAPI v3 schema (types, enums, patterns, required fields), checked
  with ``jsonschema`` (Draft 4 semantics, which OpenAPI v3 schemas follow;
  the ``x-kubernetes-*`` extensions are ignored there);
- unknown fields: CRD schemas do not set ``additionalProperties: false``;
  the API server instead prunes (or, with ``kubectl apply``'s default strict
  field validation, refuses) every field that is not in ``properties`` of
  its object, unless ``x-kubernetes-preserve-unknown-fields`` is set there
  or the object is a map (``additionalProperties``). :func:`unknown_fields`
  does the same, so a misspelled field is an error instead of being ignored.
"""

from __future__ import annotations

import copy
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from jobtools import REPO

SCHEMA_FILE = Path(__file__).parent / "data" / "kuberay-rayjob-v1-schema.yaml"
MANIFEST_FILE = REPO / "rayjob.yaml"

# The fields of metav1.ObjectMeta, which the API server knows for the root ``metadata`` (the CRD
# schema only says ``type: object`` there).
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
}


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_FILE.read_text())


def load_manifest() -> dict:
    return yaml.safe_load(MANIFEST_FILE.read_text())


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Paths of the fields the API server would drop as unknown (structural schema pruning)."""
    found = []
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        if path == ".metadata":
            return [f"{path}.{key}" for key in value if key not in OBJECT_META_FIELDS]
        properties = schema.get("properties")
        values_schema = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(values_schema, dict):
                found += unknown_fields(item, values_schema, f"{path}.{key}")
            elif properties is not None or values_schema is None:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def problems(manifest: dict) -> list[str]:
    """Everything the API server would refuse in this RayJob: schema errors and unknown fields."""
    schema = load_schema()
    found = []
    if manifest.get("apiVersion") != "ray.io/v1" or manifest.get("kind") != "RayJob":
        found.append(f"not a ray.io/v1 RayJob: {manifest.get('apiVersion')} {manifest.get('kind')}")
    for error in jsonschema.Draft4Validator(schema).iter_errors(manifest):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        found.append(f"{where or '.'}: {error.message}")
    found += [f"{path}: unknown field" for path in unknown_fields(manifest, schema)]
    return found


def test_the_vendored_schema_is_well_formed():
    schema = load_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["entrypoint"]
    assert "shutdownAfterJobFinishes" in spec["properties"]
    cluster = spec["properties"]["rayClusterSpec"]["properties"]
    assert cluster["workerGroupSpecs"]["items"]["properties"]["template"] is cluster["headGroupSpec"]["properties"]["template"]


def test_manifest_is_a_valid_rayjob():
    assert problems(load_manifest()) == []


def test_manifest_runs_the_main_job_and_cleans_up():
    spec = load_manifest()["spec"]
    command = shlex.split(spec["entrypoint"])
    assert command[:3] == ["python", "-m", "jobs.seed_importance"]
    from jobs import seed_importance

    arguments = seed_importance.parse_args(command[3:])  # every option exists and parses
    assert arguments.out.startswith("s3://"), "results must outlive the cluster"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["activeDeadlineSeconds"] > 0


def test_manifest_cluster_fits_rnnimp():
    spec = load_manifest()["spec"]
    cluster = spec["rayClusterSpec"]
    # A fixed pool: rnnimp counts the cluster's CPUs when the job starts.
    assert cluster["enableInTreeAutoscaling"] is False
    for group in cluster["workerGroupSpecs"]:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] >= 1
    # A head without CPUs cannot host a driver that reserves CPUs.
    if cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0":
        assert not spec.get("entrypointNumCpus")
    templates = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for template in templates:
        for container in template["spec"]["containers"]:
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], container["name"]
            # The image's Ray is the version the cluster declares, the one this project is tested with.
            assert container["image"] == f"rayproject/ray:{cluster['rayVersion']}-py311-cpu"
    import ray

    assert cluster["rayVersion"] == ray.__version__
    cluster_yaml = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert cluster_yaml["docker"]["image"] == f"rayproject/ray:{cluster['rayVersion']}-py311-cpu"


def test_runtime_env_installs_the_project_dependencies():
    """The pip list equals pyproject's dependencies for a Linux x86_64 image, Ray excepted."""
    from packaging.requirements import Requirement

    runtime_env = yaml.safe_load(load_manifest()["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    platform = {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"}
    wanted = set()
    for line in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name != "ray" and (requirement.marker is None or requirement.marker.evaluate(platform)):
            wanted.add(f"{requirement.name}{requirement.specifier}")
    listed = {f"{Requirement(line).name}{Requirement(line).specifier}" for line in runtime_env["pip"]}
    assert listed == wanted


DELETE = object()


def _set(manifest: dict, path: str, value) -> dict:
    """A copy of ``manifest`` with the dotted ``path`` set (``value=DELETE`` removes it)."""
    changed = copy.deepcopy(manifest)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node = changed
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return changed


def _rename(path: str, new_name: str):
    def change(manifest):
        parent, _, old = path.rpartition(".")
        changed = copy.deepcopy(manifest)
        node = changed
        for part in parent.split(".") if parent else []:
            node = node[int(part) if part.isdigit() else part]
        node[new_name] = node.pop(old)
        return changed
    return change


WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"
HEAD_CONTAINER = "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0"


@pytest.mark.parametrize("change, expected", [
    (_rename("spec.entrypoint", "entryPoint"), [".spec.entryPoint: unknown field",
                                                "'entrypoint' is a required property"]),
    (_rename("spec.shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
     [".spec.shutdownAfterJobFinish: unknown field"]),
    (_rename(f"{WORKER}.groupName", "name"), [f".spec.rayClusterSpec.workerGroupSpecs[0].name: unknown field",
                                              "'groupName' is a required property"]),
    (_rename(f"{HEAD_CONTAINER}.resources", "resource"),
     [".spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resource: unknown field"]),
    (_rename("metadata.name", "nmae"), [".metadata.nmae: unknown field"]),
    (lambda m: _set(m, "spec.shutdownAfterJobFinishes", "yes"),
     [".spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'"]),
    (lambda m: _set(m, f"{WORKER}.replicas", "2"),
     [".spec.rayClusterSpec.workerGroupSpecs[0].replicas: '2' is not of type 'integer'"]),
    (lambda m: _set(m, f"{HEAD_CONTAINER}.resources.limits.cpu", "two"),
     [".spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources.limits.cpu: 'two' does not match"]),
    (lambda m: _set(m, "spec.rayClusterSpec.headGroupSpec.rayStartParams", DELETE),
     ["'rayStartParams' is a required property"]),
    (lambda m: _set(m, "apiVersion", "ray.io/v1alpha1"), ["not a ray.io/v1 RayJob"]),
])
def test_validation_refuses_mistakes(change, expected):
    found = problems(change(load_manifest()))
    for message in expected:
        assert any(message in problem for problem in found), (message, found)
    assert len(found) == len(expected), found
