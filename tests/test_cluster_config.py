"""The cluster configuration under ``cluster/``, checked by structure: no Ray started, no
network, no docker, no Kubernetes.

* ``aws.yaml`` / ``gcp.yaml`` against the JSON schema the Ray autoscaler itself validates
  with (``ray/autoscaler/ray-schema.json`` inside the installed wheel), plus the rules the
  files are written for (our image, nothing pip-installed at start, token auth, CPU-0 head).
* The KubeRay manifests: kinds and required fields, every image ours with the Ray pin's
  tag, head CPU 0, GPU pods that request ``nvidia.com/gpu``, and each RayJob's entrypoint
  parsed by the job's own argument parser, its Ray requests fitted into the pods.
* The node image's Dockerfile and its build-context filter.
* No credential values in any file.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import math
import re
import shlex
import subprocess
import types
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")
from packaging.requirements import Requirement  # noqa: E402  (after the skips)
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
DOCKERIGNORE = CLUSTER / "docker" / "Dockerfile.dockerignore"
AUTOSCALER_FILES = ("aws.yaml", "gcp.yaml")
RAYJOB_FILES = ("rayjob-mask-dataset.yaml", "rayjob-train-facenet.yaml", "rayjob-evaluate.yaml")
SHARED_STORAGE = ("s3://", "gs://")


# ------------------------------------------------------------------------------------------
# what the files must agree with: pyproject, the README, the Dockerfile's build arguments
# ------------------------------------------------------------------------------------------

def _pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin() -> SpecifierSet:
    """The Ray requirement of the ``jobs`` extra (what client and cluster must run)."""
    reqs = [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["jobs"]]
    (ray,) = [r for r in reqs if r.name == "ray"]
    return ray.specifier


def _docker_args() -> dict[str, str]:
    """``ARG NAME=default`` lines of the Dockerfile -> {NAME: default} (first default wins)."""
    args: dict[str, str] = {}
    for m in re.finditer(r"^ARG\s+(\w+)=(\S+)\s*$", DOCKERFILE.read_text(), re.M):
        args.setdefault(m.group(1), m.group(2))
    return args


def _expected_image(flavour: str) -> str:
    """``masktheface:<project version>-ray<RAY_VERSION>-<flavour>`` (without the registry)."""
    return f"masktheface:{_pyproject()['project']['version']}-ray{_docker_args()['RAY_VERSION']}-{flavour}"


def _split_image(image: str) -> tuple[str, str]:
    """``registry/path/masktheface:tag`` -> (``registry/path``, ``masktheface:tag``)."""
    registry, _, name = image.rpartition("/")
    return registry, name


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_image_tag_follows_the_ray_pin_and_the_project_version():
    ray_version = _docker_args()["RAY_VERSION"]
    assert Version(ray_version) in _ray_pin(), f"Dockerfile RAY_VERSION {ray_version} is outside {_ray_pin()}"
    # the client that submits jobs runs the installed Ray: the same minor version
    ray_dist = importlib.metadata.version("ray")
    assert Version(ray_dist).release[:2] == Version(ray_version).release[:2]
    assert _expected_image("cpu") == f"masktheface:{_pyproject()['project']['version']}-ray{ray_version}-cpu"


# ------------------------------------------------------------------------------------------
# Ray autoscaler files (ray up)
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_schema() -> dict[str, Any]:
    """The schema ``ray up`` validates with, read from the installed Ray wheel (without
    importing ray)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def _schema_errors(schema: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(cfg)]


@pytest.mark.parametrize("name", AUTOSCALER_FILES)
def test_autoscaler_yaml_matches_rays_schema(name, ray_schema):
    assert _schema_errors(ray_schema, _load(CLUSTER / name)) == []


@pytest.mark.parametrize("breakage", ["typo_key", "fractional_resource", "no_node_config", "bad_docker_key"])
def test_schema_check_catches_a_broken_config(breakage, ray_schema):
    """The validation above has teeth: the mistakes one makes editing these files fail it."""
    cfg = _load(CLUSTER / "aws.yaml")
    if breakage == "typo_key":
        cfg["max_worker"] = cfg.pop("max_workers")
    elif breakage == "fractional_resource":
        cfg["available_node_types"]["cpu_spot"]["resources"] = {"CPU": 0.5}
    elif breakage == "no_node_config":
        del cfg["available_node_types"]["gpu"]["node_config"]
    else:
        cfg["available_node_types"]["gpu"]["docker"]["image"] = "x"  # only worker_image is allowed there
    assert _schema_errors(ray_schema, cfg), f"{breakage} was not caught"


def _setup_commands(cfg: dict[str, Any]) -> Iterator[str]:
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        yield from cfg.get(key) or []
    for node in cfg["available_node_types"].values():
        yield from node.get("worker_setup_commands") or []
        yield from node.get("initialization_commands") or []


@pytest.mark.parametrize("name", AUTOSCALER_FILES)
def test_autoscaler_yaml_runs_our_image_and_installs_nothing(name):
    cfg = _load(CLUSTER / name)
    types_ = cfg["available_node_types"]
    images = {"docker.image": cfg["docker"]["image"], "gpu.worker_image": types_["gpu"]["docker"]["worker_image"]}
    registries = {_split_image(i)[0] for i in images.values()}
    assert len(registries) == 1 and "" not in registries, images
    assert _split_image(images["docker.image"])[1] == _expected_image("cpu")
    assert _split_image(images["gpu.worker_image"])[1] == _expected_image("gpu")
    for cmd in _setup_commands(cfg):
        assert "pip install" not in cmd and "conda install" not in cmd, f"{name}: installs at start: {cmd}"
    # the code is in the image and in each job's working_dir: only the token is mounted
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


@pytest.mark.parametrize("name", AUTOSCALER_FILES)
def test_autoscaler_yaml_keeps_token_auth_cpu0_head_and_spot(name):
    cfg = _load(CLUSTER / name)
    types_ = cfg["available_node_types"]
    assert types_[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    for cmd in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token ray start" in cmd
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    spot = types_["cpu_spot"]["node_config"]
    assert (spot.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
            or {"preemptible": True} in spot.get("scheduling", []))
    assert cfg["max_workers"] >= sum(t.get("max_workers", 0) for t in types_.values())


# ------------------------------------------------------------------------------------------
# KubeRay manifests
# ------------------------------------------------------------------------------------------

def _quantity(q: Any) -> Fraction:
    """A Kubernetes quantity (``"30"``, ``"500m"``, ``4``) as a number of units."""
    s = str(q).strip()
    return Fraction(int(s[:-1]), 1000) if s.endswith("m") else Fraction(s)


@dataclasses.dataclass(frozen=True)
class Group:
    """One pod group of a RayCluster spec and the Ray resources each of its pods gets
    (KubeRay: rayStartParams num-cpus/num-gpus, else the Ray container's limits)."""

    name: str
    replicas: int
    max_replicas: int
    cpus: Fraction
    gpus: int
    spec: dict[str, Any]

    @property
    def container(self) -> dict[str, Any]:
        return self.spec["template"]["spec"]["containers"][0]


def _group(name: str, spec: dict[str, Any], head: bool = False) -> Group:
    params = spec["rayStartParams"]
    limits = spec["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus = _quantity(params.get("num-cpus", limits["cpu"]))
    gpus = int(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    replicas = 1 if head else int(spec.get("replicas", spec["minReplicas"]))
    return Group(name, replicas, 1 if head else int(spec["maxReplicas"]), cpus, gpus, spec)


def _groups(cluster_spec: dict[str, Any]) -> list[Group]:
    return [_group("head", cluster_spec["headGroupSpec"], head=True)] + [
        _group(g["groupName"], g) for g in cluster_spec.get("workerGroupSpecs", [])]


def _kuberay_docs() -> dict[str, dict[str, Any]]:
    return {p.name: _load(p) for p in sorted(KUBERAY.glob("*.yaml"))}


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def test_kuberay_files_are_the_expected_kinds():
    docs = _kuberay_docs()
    assert set(docs) == {"raycluster.yaml", "serviceaccount.yaml", *RAYJOB_FILES}
    assert docs["serviceaccount.yaml"]["kind"] == "ServiceAccount"
    assert docs["raycluster.yaml"]["kind"] == "RayCluster"
    for name in ("raycluster.yaml", *RAYJOB_FILES):
        doc = docs[name]
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["kind"] == ("RayCluster" if name == "raycluster.yaml" else "RayJob"), name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name


@pytest.mark.parametrize("name", ["raycluster.yaml", *RAYJOB_FILES])
def test_kuberay_cluster_spec_is_complete_and_ours(name):
    spec = _cluster_spec(_kuberay_docs()[name])
    registry = _split_image(_load(CLUSTER / "aws.yaml")["docker"]["image"])[0]
    assert spec["rayVersion"] == _docker_args()["RAY_VERSION"]
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for g in _groups(spec):
        pod = g.spec["template"]["spec"]
        assert "rayStartParams" in g.spec and pod["containers"], f"{name}/{g.name}"
        assert pod["serviceAccountName"] == "masktheface-ray"
        if g.name != "head":
            assert {"groupName", "minReplicas", "maxReplicas"} <= set(g.spec)
            assert g.spec["minReplicas"] <= g.replicas <= g.max_replicas, f"{name}/{g.name}"
        for c in pod["containers"]:
            flavour = "gpu" if g.gpus else "cpu"
            assert c["image"] == f"{registry}/{_expected_image(flavour)}", f"{name}/{g.name}: {c['image']}"
            res = c["resources"]
            assert _quantity(res["requests"]["cpu"]) == _quantity(res["limits"]["cpu"])
            assert str(res["requests"]["memory"]) == str(res["limits"]["memory"])
            # extended resources: Kubernetes wants the limit, and a request equal to it
            assert res["requests"].get("nvidia.com/gpu") == res["limits"].get("nvidia.com/gpu")
            assert {"secretRef": {"name": "masktheface-s3", "optional": True}} in c.get("envFrom", [])
    assert any(g.gpus for g in _groups(spec)) == (name != "rayjob-mask-dataset.yaml")


def test_raycluster_autoscales_a_cpu_and_a_gpu_group():
    spec = _kuberay_docs()["raycluster.yaml"]["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g.name: g for g in _groups(spec)}
    assert groups["head"].cpus == 0
    assert groups["cpu"].gpus == 0 and groups["cpu"].max_replicas > groups["cpu"].spec["minReplicas"]
    assert groups["gpu"].gpus >= 1 and groups["gpu"].max_replicas >= 1
    assert int(groups["gpu"].container["resources"]["limits"]["nvidia.com/gpu"]) == groups["gpu"].gpus


@pytest.mark.parametrize("name", RAYJOB_FILES)
def test_rayjob_runs_on_its_own_cluster_and_cleans_up(name):
    docs = _kuberay_docs()
    spec = docs[name]["spec"]
    assert "rayClusterSpec" in spec and "clusterSelector" not in spec
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    rt = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    assert "working_dir" not in rt and "pip" not in rt  # the code and its dependencies are the image's
    assert not any(k.startswith("AWS_") for k in rt.get("env_vars", {}))
    # the head is the long-lived cluster's head (same image, start parameters, environment, size)
    head = _cluster_spec(docs["raycluster.yaml"])["headGroupSpec"]
    mine = spec["rayClusterSpec"]["headGroupSpec"]
    assert mine["rayStartParams"] == head["rayStartParams"]
    for key in ("image", "env", "envFrom", "resources", "ports"):
        assert mine["template"]["spec"]["containers"][0][key] == head["template"]["spec"]["containers"][0][key], key


# ------------------------------------------------------------------------------------------
# RayJob entrypoints: the job's own parser, and the Ray requests against the pods
# ------------------------------------------------------------------------------------------

def _config_class(mod: types.ModuleType) -> type:
    """The job's frozen config dataclass (defined in the job module, named *Config)."""
    found = [v for v in vars(mod).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
             and v.__module__ == mod.__name__ and v.__name__.endswith("Config")]
    assert len(found) == 1, f"{mod.__name__}: config classes {found}"
    return found[0]


def _job_parser(module: str) -> Callable[[list[str]], Any]:
    """argv -> the job's config, by the job's own parser (``parse_args`` where the job has
    one, else :func:`jobs.cli.parse_config` of its config class)."""
    from jobs import cli

    mod = importlib.import_module(module)
    if callable(getattr(mod, "parse_args", None)):
        return mod.parse_args
    cls = _config_class(mod)
    return lambda argv: cli.parse_config(cls, argv, prog=getattr(mod, "PROG", module))


def _entrypoint(name: str) -> tuple[str, Any]:
    """(job module, parsed config) of a RayJob's entrypoint; a usage error fails the test."""
    argv = shlex.split(_kuberay_docs()[name]["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), argv[:3]
    parse = _job_parser(argv[2])
    try:
        return argv[2], parse(argv[3:])
    except SystemExit as e:  # argparse: an unknown flag or a bad value (printed to stderr)
        pytest.fail(f"{name}: {argv[2]} rejects its entrypoint (exit {e.code})")


def _job_groups(name: str) -> list[Group]:
    return [g for g in _groups(_cluster_spec(_kuberay_docs()[name])) if g.name != "head"]


def test_mask_dataset_entrypoint_parses_and_fits_the_cpu_pods():
    module, cfg = _entrypoint("rayjob-mask-dataset.yaml")
    assert module == "jobs.mask_dataset"
    groups = _job_groups("rayjob-mask-dataset.yaml")
    assert groups and not any(g.gpus for g in groups)
    # the default (one actor per cluster CPU) counts the CPUs present when the job starts
    assert cfg.num_actors is not None, "give --num-actors on a cluster"
    per_pod = {g.name: math.floor(g.cpus / Fraction(cfg.actor_cpus)) for g in groups}
    assert sum(g.replicas * per_pod[g.name] for g in groups) >= cfg.num_actors, "the actors do not fit the pods"
    total = sum(g.replicas * g.cpus for g in groups)
    free = total - cfg.num_actors * Fraction(cfg.actor_cpus)
    # a pool that holds every CPU deadlocks Ray Data (read/write tasks never run): leave room
    assert free >= max(1, 4 * Fraction(cfg.read_cpus)), f"only {float(free)} CPUs left for read/write tasks"
    assert cfg.input.startswith(SHARED_STORAGE) and cfg.output.startswith(SHARED_STORAGE)


def test_train_facenet_entrypoint_parses_and_uses_every_gpu():
    from jobs.train_facenet import check_sampling

    module, cfg = _entrypoint("rayjob-train-facenet.yaml")
    assert module == "jobs.train_facenet"
    groups = [g for g in _job_groups("rayjob-train-facenet.yaml") if g.gpus]
    assert cfg.use_gpu and groups
    # Ray Train places one worker (1 GPU + --cpus-per-worker CPUs) per bundle, on any pod
    per_pod = {g.name: min(g.gpus, math.floor(g.cpus / Fraction(cfg.cpus_per_worker))) for g in groups}
    assert sum(g.replicas * per_pod[g.name] for g in groups) >= cfg.num_workers, "the workers do not fit the pods"
    assert cfg.num_workers == sum(g.replicas * g.gpus for g in groups), "--num-workers should use every GPU"
    check_sampling(types.SimpleNamespace(n_identities=10**6), cfg.P, cfg.K, cfg.num_workers)  # P % workers
    # checkpoints and data must be storage every pod sees
    assert cfg.output.startswith(SHARED_STORAGE) and all(d.startswith(SHARED_STORAGE) for d in cfg.data)


def test_evaluate_entrypoint_parses_and_fits_the_gpu_pod():
    module, cfg = _entrypoint("rayjob-evaluate.yaml")
    assert module == "jobs.evaluate"
    groups = _job_groups("rayjob-evaluate.yaml")
    gpus = sum(g.replicas * g.gpus for g in groups)
    assert gpus and cfg.num_actors is not None
    # with GPUs present the job gives each embedding actor one GPU
    per_pod = {g.name: min(g.gpus, math.floor(g.cpus / Fraction(cfg.actor_cpus))) for g in groups}
    assert cfg.num_actors == gpus <= sum(g.replicas * per_pod[g.name] for g in groups)
    assert cfg.output.startswith(SHARED_STORAGE) and cfg.images.startswith(SHARED_STORAGE)
    # --pairs is read by the driver (on the head pod) from its own disk: a mounted ConfigMap
    head = _cluster_spec(_kuberay_docs()["rayjob-evaluate.yaml"])["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    mounts = [m for m in head["containers"][0].get("volumeMounts", [])
              if Path(cfg.pairs).is_relative_to(m["mountPath"]) and "configMap" in volumes.get(m["name"], {})]
    assert mounts, f"--pairs {cfg.pairs} is not on a ConfigMap mounted in the head pod"


# ------------------------------------------------------------------------------------------
# Dockerfile and build context
# ------------------------------------------------------------------------------------------

def _dockerfile_text() -> str:
    """The Dockerfile with continuation lines joined."""
    return DOCKERFILE.read_text().replace("\\\n", " ")


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfile_base_image_is_the_pinned_ray(flavour):
    args = _docker_args()
    (base,) = re.findall(r"^FROM\s+(\S+)", _dockerfile_text(), re.M)
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: flavour if m.group(1) == "FLAVOUR" else args[m.group(1)], base)
    assert resolved == f"rayproject/ray:{args['RAY_VERSION']}-{args['PYTHON_TAG']}-{flavour}"
    py = args["PYTHON_TAG"].removeprefix("py")
    assert Version(f"{py[0]}.{py[1:]}") in SpecifierSet(_pyproject()["project"]["requires-python"])


def test_dockerfile_torch_matches_the_readme_and_the_flavours():
    readme_pin = re.search(r"pip install torch==([\w.]+)", (ROOT / "README.md").read_text())
    assert readme_pin, "the README's install line no longer pins torch"
    assert _docker_args()["TORCH_VERSION"] == readme_pin.group(1)
    text = _dockerfile_text()
    cpu = re.search(r"cpu\)\s*pip install[^;]*", text).group(0)
    gpu = re.search(r"gpu\)\s*pip install[^;]*", text).group(0)
    assert "${TORCH_VERSION}" in cpu and "--index-url" in cpu and "${TORCH_VERSION}" in gpu
    assert _docker_args()["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert "--index-url" not in gpu  # the CUDA build is PyPI's default


def test_dockerfile_installs_the_package_and_checks_it_at_build_time():
    text = _dockerfile_text()
    installs = re.findall(r"pip install[^;]*", text)
    assert any("[jobs]" in i for i in installs), "the project with its Ray extra"
    assert not any(re.search(r"\s(-e|--editable)\s", i) for i in installs), "pip install . is not editable"
    assert "COPY" not in text.split("FROM", 1)[1] or "RUN --mount=type=bind" in text
    # the build's smoke check: every package imports, dlib's model files are found and load
    imports = re.search(r'python -c "import ([\w, ]+);', text)
    assert imports and {"masktheface", "facenet", "jobs", "dlib"} <= {m.strip() for m in imports.group(1).split(",")}
    assert "find_spec('face_recognition_models')" in text
    assert "Masker()" in text and "dlib_face_recognition_resnet_model_v1.dat" in text


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    """Dockerfile.dockerignore -> [(is_exception, regex)] in file order."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg, pat = line.startswith("!"), line.lstrip("!").strip("/")
        rx = ""
        for tok in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pat):
            rx += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(tok, re.escape(tok))
        rules.append((neg, re.compile(rx)))
    return rules


def _in_context(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders
    decides; ``!`` patterns let a path back in."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    kept = True
    for neg, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            kept = neg
    return kept


def test_build_context_holds_the_package_and_nothing_else():
    rules = _ignore_rules()
    packages = [p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = {"pyproject.toml", "README.md"}
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available to list the repository's files")
    for path in tracked:
        wanted = path in needed or (path.split("/")[0] in packages and "__pycache__" not in path)
        assert _in_context(path, rules) == wanted, f"{path}: {'missing from' if wanted else 'leaks into'} the context"
    for path in (".git/config", "out/run/part-0.parquet", ".bench/x.json", "masktheface/__pycache__/a.pyc",
                 "masktheface_ray.egg-info/PKG-INFO", "build/lib/jobs/cli.py", ".env", "model.pt",
                 "jobs/checkpoint.pt", "data/lfw/a.jpg"):
        assert not _in_context(path, rules), f"{path} would be sent to the docker build"


# ------------------------------------------------------------------------------------------
# credentials
# ------------------------------------------------------------------------------------------

SECRET_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")


def _credential_values(text: str) -> list[str]:
    """Literal credential values in ``text``: ``NAME: value`` / ``NAME=value`` with a value
    that is not a placeholder (``<...>``) or a variable (``$X``, ``${X}``), an env entry
    ``{name: NAME, value: ...}``, or an AWS key id."""
    found = [m.group(0) for m in re.finditer(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", text)]
    for m in re.finditer(rf"\b({'|'.join(SECRET_NAMES)})\b[\"']?\s*[:=]\s*([^\s,}}]*)", text):
        value = m.group(2).strip("\"'")
        if value and not value.startswith(("<", "$", "{")):
            found.append(m.group(0))
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        docs = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") in SECRET_NAMES and "value" in node:
                found.append(f"{node['name']}: {node['value']}")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    for doc in docs:
        walk(doc)
    return found


def test_no_credential_values_in_the_cluster_files():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        assert _credential_values(path.read_text(errors="replace")) == [], path


@pytest.mark.parametrize("text", [
    "AWS_SECRET_ACCESS_KEY: hunter2hunter2\n",
    "env:\n  - {name: AWS_SECRET_ACCESS_KEY, value: abc}\n",
    "export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP\n",
    "--from-literal=AWS_SESSION_TOKEN=FwoGZXIvYXdzEJr\n",
])
def test_credential_scan_catches_literals(text):
    assert _credential_values(text)


def test_credential_scan_allows_placeholders_and_references():
    ok = ("--from-literal=AWS_SECRET_ACCESS_KEY=<secret key>\n"
          "AWS_ACCESS_KEY_ID: ${AWS_ACCESS_KEY_ID}\n"
          "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    valueFrom: {secretKeyRef: {name: s3, key: k}}\n")
    assert _credential_values(ok) == []
