"""The jobs' shared plumbing: jobs.storage (URIs on local folders and a real S3 server,
credentials in runtime_env), jobs.raysetup (the Ray start-up policy, token auth without
Ray's warning, `ray job submit`), jobs.progress (logging, progress lines), and the cluster
configuration files.  The command-line convention (jobs.cli) is in test_jobs_cli.py."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs import progress, raysetup, storage

ROOT = Path(__file__).resolve().parents[1]

_AWS = [k for k in storage.S3_ENV_VARS]


@pytest.fixture
def no_aws_env(monkeypatch):
    for k in _AWS:
        monkeypatch.delenv(k, raising=False)


# ------------------------------------------------------------------------------ URIs

def test_is_s3_and_join_uri():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/s3://x") and not storage.is_s3("gs://b")
    assert storage.join_uri("s3://b/out/", "x", "/y.json") == "s3://b/out/x/y.json"
    assert storage.join_uri("s3://b", "") == "s3://b"
    assert storage.join_uri("/data/out", "a", "/b") == os.path.join("/data/out", "a", "b")
    assert storage.join_uri(Path("/data"), "a") == os.path.join("/data", "a")
    assert storage.path_to_uri("bucket/a/b.jpg", "s3://bucket/a") == "s3://bucket/a/b.jpg"
    assert storage.path_to_uri("s3://bucket/a", "s3://x") == "s3://bucket/a"
    assert storage.path_to_uri("/abs/a.jpg", "/abs") == "/abs/a.jpg"


def test_inside_and_overlaps(tmp_path):
    assert storage.inside(tmp_path / "a" / "b", tmp_path / "a") and storage.inside(tmp_path, tmp_path)
    assert not storage.inside(tmp_path / "ab", tmp_path / "a")  # a prefix of the name is not a parent
    assert storage.overlaps(tmp_path, tmp_path / "x") and storage.overlaps(tmp_path / "x", tmp_path)
    assert storage.inside("s3://b/out/x", "s3://b/out") and not storage.inside("s3://b/outer", "s3://b/out")
    assert not storage.overlaps("s3://b/x", "/b/x") and storage.is_local(f"file://{tmp_path}")
    assert storage.inside(os.path.relpath(tmp_path / "q"), tmp_path)  # relative paths made absolute


def test_filesystem_for_local(tmp_path):
    import pyarrow.fs as pafs

    fs, path = storage.filesystem_for(tmp_path)
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    assert storage.filesystem_for(f"file://{tmp_path}/x")[1] == f"{tmp_path}/x"
    assert os.path.isabs(storage.filesystem_for("relative/dir")[1])


def _make_tree(root: Path) -> None:
    for rel in ["b/2.JPG", "a/1.jpg", "a/notes.txt", "a/with space.png", "a/ünï.code.jpeg",
                "a/deep/x.webp", ".hidden/z.jpg", "a/._junk.jpg", "top.jpg"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())


def test_list_files_local(tmp_path, caplog):
    _make_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="jobs.storage"):
        got = storage.list_files(tmp_path, [".jpg", "JPEG", "png", "webp"])
    rel = [os.path.relpath(g, tmp_path) for g in got]
    assert rel == sorted(rel)
    assert set(rel) == {"a/1.jpg", "a/deep/x.webp", "a/with space.png", "a/ünï.code.jpeg",
                        "b/2.JPG", "top.jpg"}
    assert "left out 2 hidden" in caplog.text
    assert len(storage.list_files(tmp_path, include_hidden=True)) == 9
    assert [os.path.basename(p) for p in storage.list_files(tmp_path, recursive=False)] == ["top.jpg"]
    assert storage.list_files(tmp_path / "top.jpg") == [str(tmp_path / "top.jpg")]
    assert storage.list_files(tmp_path / "top.jpg", ".png") == []
    with pytest.raises(FileNotFoundError):
        storage.list_files(tmp_path / "missing")


@dataclasses.dataclass(frozen=True)
class _Cfg:
    name: str = "x"
    far: tuple[float, ...] = (0.001,)


def test_bytes_and_json_local(tmp_path):
    uri = storage.join_uri(str(tmp_path), "new", "deeper", "f.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01")
    assert storage.read_bytes(uri) == b"\x00\x01" and storage.exists(uri)
    assert os.listdir(os.path.dirname(uri)) == ["f.bin"]  # no temp file left behind
    obj = {"a": np.float32(1.5), "b": np.arange(3), "cfg": _Cfg(), "p": Path("/x"), "s": {2, 1},
           "ü": "ünï"}
    storage.write_json(storage.join_uri(str(tmp_path), "s.json"), obj)
    back = storage.read_json(storage.join_uri(str(tmp_path), "s.json"))
    assert back == {"a": 1.5, "b": [0, 1, 2], "cfg": {"name": "x", "far": [0.001]}, "p": "/x",
                    "s": [1, 2], "ü": "ünï"}
    d = storage.ensure_dir(storage.join_uri(str(tmp_path), "made", "here"))
    assert os.path.isdir(d) and storage.exists(d)


# ------------------------------------------------------------------------------ S3 settings

def _fs_options(fs) -> dict:
    return fs.__reduce__()[1][0]  # S3FileSystem pickles its options: what workers get


def test_s3_settings_from_env_and_options(monkeypatch, no_aws_env):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://specific:2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    fs, path = storage.filesystem_for("s3://bkt/a/b/")
    o = _fs_options(fs)
    assert path == "bkt/a/b"
    assert (o["endpoint_override"], o["scheme"], o["access_key"], o["region"]) == \
        ("specific:2", "http", "envkey", "us-east-1")
    fs2, _ = storage.filesystem_for("s3://bkt", {"key": "k", "secret": "s", "endpoint_url": "https://h:3",
                                          "client_kwargs": {"region_name": "eu-west-1"}})
    o2 = _fs_options(fs2)
    assert (o2["endpoint_override"], o2["scheme"], o2["access_key"], o2["secret_key"],
            o2["region"]) == ("h:3", "https", "k", "s", "eu-west-1")
    assert storage.filesystem_for("s3://bkt")[0] is fs  # cached per settings
    with pytest.raises(ValueError):
        storage.filesystem_for("s3://")


def test_s3_env_vars_redact_and_runtime_env(monkeypatch, no_aws_env):
    assert storage.s3_env_vars() == {} and storage.worker_runtime_env() == {}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "sessiontok")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://old:1")
    env = storage.s3_env_vars({"key": "k2", "secret": "s2", "endpoint_url": "http://new:2"})
    assert env["AWS_ACCESS_KEY_ID"] == "k2" and env["AWS_SECRET_ACCESS_KEY"] == "s2"
    assert "AWS_SESSION_TOKEN" not in env  # the env's token belongs to the env's keys
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == "http://new:2"
    rt = storage.worker_runtime_env(None, {"working_dir": ".", "env_vars": {"AWS_REGION": "x", "A": 1}})
    assert rt["working_dir"] == "." and rt["env_vars"]["AWS_REGION"] == "x"
    assert rt["env_vars"]["A"] == "1" and rt["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "topsecret"
    red = storage.redact(rt)
    text = json.dumps(red)
    assert "topsecret" not in text and "sessiontok" not in text and "AKIAEXAMPLE" not in text
    assert red["env_vars"]["AWS_ACCESS_KEY_ID"] == "AKIA…"
    assert red["env_vars"]["AWS_ENDPOINT_URL_S3"] == "http://old:1"
    assert storage.redact({"storage": [{"secret": "x", "key": "abcdefgh"}]}) == \
        {"storage": [{"secret": "***", "key": "abcd…"}]}


def test_without_job_conflicts(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"AWS_REGION": "a"}}}))
    rt = raysetup._without_job_conflicts({"working_dir": ".", "pip": ["x"],
                                   "env_vars": {"AWS_REGION": "a", "B": "b"}})
    assert rt == {"pip": ["x"], "env_vars": {"B": "b"}}


# ------------------------------------------------------------------------------ real S3

def test_s3_roundtrip_with_options(s3_server, s3_bucket, no_aws_env):
    opts = s3_server.storage_options()
    base = storage.join_uri(s3_bucket, "run 1")
    assert not storage.exists(base, opts)
    storage.ensure_dir(base, opts)  # bucket exists: fine, creates nothing
    with pytest.raises(FileNotFoundError):
        storage.ensure_dir("s3://no-such-bucket-mtf/x", opts)
    for rel in ["b/2.JPG", "a/1.jpg", "a/ünï code.jpeg", "a/notes.txt", "a/._junk.jpg"]:
        storage.write_bytes(storage.join_uri(base, rel), rel.encode(), opts)
    got = storage.list_files(base, ["jpg", ".jpeg"], storage_options=opts)
    assert got == sorted(got) and all(g.startswith(base + "/") for g in got)
    assert [g[len(base) + 1:] for g in got] == ["a/1.jpg", "a/ünï code.jpeg", "b/2.JPG"]
    assert storage.read_bytes(got[1], opts) == "a/ünï code.jpeg".encode()
    assert storage.exists(storage.join_uri(base, "a"), opts) and storage.exists(got[0], opts)
    assert not storage.exists(storage.join_uri(base, "zzz"), opts)
    assert storage.list_files(base, recursive=False, storage_options=opts) == []
    storage.write_json(storage.join_uri(base, "summary.json"), {"n": np.int64(3)}, opts)
    assert storage.read_json(storage.join_uri(base, "summary.json"), opts) == {"n": 3}


def test_s3_via_environment(s3_bucket, s3_env):
    uri = storage.join_uri(s3_bucket, "env.txt")
    storage.write_bytes(uri, b"from env")
    assert storage.read_bytes(uri) == b"from env" and storage.list_files(s3_bucket) == [uri]


def test_s3_wrong_secret_is_refused(s3_server, s3_bucket, no_aws_env):
    if s3_server.kind != "seaweedfs":
        pytest.skip("moto accepts any credentials")
    bad = dict(s3_server.storage_options(), secret="wrong")
    with pytest.raises(OSError):
        storage.write_bytes(storage.join_uri(s3_bucket, "x"), b"x", bad)


# ------------------------------------------------------------------------------ Ray

def test_init_ray_reuses_session(ray_session):
    import ray

    info = raysetup.init_ray(num_cpus=1)
    assert info.mode == "reused" and info.cpus == 2 and info.address == ray_session.address
    with raysetup.ray_context() as info2:
        assert info2.mode == "reused"
    assert ray.is_initialized()  # a reused session is left running


def test_private_token_auth(monkeypatch, tmp_path):
    """A private local Ray gets token auth chosen explicitly (no Ray warning) and a token
    in this process's environment when none exists (no ~/.ray/auth_token written)."""
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    raysetup._private_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's choice stands
    raysetup._private_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in os.environ
    monkeypatch.delenv("RAY_AUTH_MODE")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 32)  # an existing token is used as it is
    raysetup._private_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in os.environ


_LOCAL_RAY = """
from jobs import raysetup
with raysetup.ray_context(num_cpus=1) as info:
    import ray
    print("mode", info.mode, ray.get(ray.remote(lambda: 41 + 1).remote()))
"""


@pytest.mark.slow
def test_private_local_ray_is_quiet(tmp_path):
    """A job's own local Ray: no token-auth warning, nothing written to the home folder."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", _LOCAL_RAY], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "mode local 42" in res.stdout, out[-3000:]
    assert "Token authentication is enabled" not in out and "Generated new authentication token" not in out
    assert not (tmp_path / ".ray").exists()


def _env_probe(batch):
    # runs on a Ray worker: what does it see, and can it reach S3 through the env alone?
    from jobs import storage as st

    uri = batch["uri"][0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3", "")
    text = st.read_bytes(uri).decode() if endpoint else ""
    return {"endpoint": np.array([endpoint] * len(batch["uri"])),
            "text": np.array([text] * len(batch["uri"]))}


def test_ray_data_parquet_roundtrip_on_s3(ray_session, s3_server, s3_bucket, no_aws_env):
    """The mechanism every job uses: an explicit filesystem for Ray Data I/O, and the S3
    settings in runtime_env for UDFs that open s3:// themselves.  The driver has no AWS_*
    variables and the session's workers were started without them."""
    import ray

    opts = s3_server.storage_options()
    out = storage.join_uri(s3_bucket, "x")
    fs, path = storage.filesystem_for(out, opts)
    rows = [{"key": f"id{i:03d}/img.jpg", "value": i, "blob": bytes([i % 256]) * 10} for i in range(200)]
    ray.data.from_items(rows, override_num_blocks=4).write_parquet(
        path, filesystem=fs, mode="overwrite", min_rows_per_file=100)
    files = storage.list_files(out, ".parquet", storage_options=opts)
    assert files and all(f.startswith(out + "/") for f in files)
    back = ray.data.read_parquet(path, filesystem=fs).take_all()
    assert sorted((r["key"], r["value"], r["blob"]) for r in back) == \
        [(r["key"], r["value"], r["blob"]) for r in rows]

    # rerun with mode="overwrite": replaced, not appended
    ray.data.from_items(rows[:10]).write_parquet(path, filesystem=fs, mode="overwrite")
    assert ray.data.read_parquet(path, filesystem=fs).count() == 10

    probe_uri = storage.join_uri(s3_bucket, "probe.txt")
    storage.write_bytes(probe_uri, b"hello from s3", opts)
    ds = ray.data.from_items([{"uri": probe_uri}] * 4)
    bare = ds.map_batches(_env_probe, batch_size=2).take_all()
    assert {r["endpoint"] for r in bare} == {""}  # no credentials leak into workers
    with_env = ds.map_batches(_env_probe, batch_size=2,
                              runtime_env=storage.worker_runtime_env(opts)).take_all()
    assert {r["endpoint"] for r in with_env} == {s3_server.endpoint_url}
    assert {r["text"] for r in with_env} == {"hello from s3"}


# ------------------------------------------------------------------------------ ray job submit

_JOB_PROBE = """
import os
from jobs import progress, raysetup, storage
progress.setup_logging("INFO")
info = raysetup.init_ray()
import ray
print("mode", info.mode, "cpus", info.cpus)
uri = os.environ["MTF_PROBE_URI"]
print("driver", storage.read_bytes(uri).decode())
print("worker", ray.get(ray.remote(lambda u: storage.read_bytes(u).decode()).remote(uri)))
print("ok")
"""


@pytest.mark.slow
def test_ray_job_submit(ray_head, s3_server, s3_bucket, no_aws_env):
    """`ray job submit --working-dir .` against a token-protected head; the job's driver
    connects with init_ray (no runtime_env conflict) and reaches S3 from the driver and a
    worker with credentials that travel only in the job's runtime_env."""
    uri = storage.join_uri(s3_bucket, "job.txt")
    storage.write_bytes(uri, b"job-data", s3_server.storage_options())
    rt = storage.worker_runtime_env(s3_server.storage_options(), {"env_vars": {"MTF_PROBE_URI": uri}})
    res = ray_head.submit([sys.executable, "-c", _JOB_PROBE], runtime_env=rt, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "mode connected cpus 2.0" in out and "driver job-data" in out
    assert "worker job-data" in out and "\nok" in out
    assert s3_server.secret not in out.split("Running entrypoint")[-1]  # not logged by us

    bad = ray_head.submit([sys.executable, "-c", "raise SystemExit(3)"], working_dir=None,
                          timeout=120)
    assert bad.returncode != 0


# ------------------------------------------------------------------------------ logging

def test_progress_logger_rate_eta_and_throttle(caplog):
    now = [0.0]
    p = progress.ProgressLogger(total=100, what="images", every_s=10, clock=lambda: now[0],
                         logger=logging.getLogger("t.progress"))
    with caplog.at_level(logging.INFO, logger="t.progress"):
        now[0] = 5.0
        assert not p.update(10)          # too soon to log
        now[0] = 10.0
        assert p.update(10)              # 20 in 10 s
        now[0] = 12.0
        assert not p.update(5)
        summary = p.finish()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2
    assert msgs[0] == "20/100 images (20.0%), 2.0 images/s, elapsed 10s, ETA 40s"
    assert summary == {"done": 25, "total": 100, "seconds": 12.0, "per_second": 2.083}
    assert progress.format_duration(3725.2) == "1h02m05s" and progress.format_duration(None) == "?"
    assert "ETA" not in progress.ProgressLogger(None, clock=lambda: 1.0).message()


def test_setup_logging_is_idempotent():
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        progress.setup_logging("debug")
        progress.setup_logging(logging.WARNING)
        assert len(root.handlers) <= max(1, len(before)) and root.level == logging.WARNING
        with pytest.raises(ValueError):
            progress.setup_logging("loud")
    finally:  # leave the root logger as pytest set it up, for the tests that follow
        root.handlers[:] = before
        root.setLevel(level)


# ------------------------------------------------------------------------------ cluster config

@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cluster_yaml_is_valid_for_the_autoscaler(name):
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(cfg)
    validate_config(prepare_config(cfg))  # with the provider's defaults filled in
    types_ = cfg["available_node_types"]
    assert types_[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"cpu_spot", "gpu"} <= set(types_)
    assert "2.60" in cfg["docker"]["image"] and "2.60" in types_["gpu"]["docker"]["worker_image"]


def test_runtime_env_yaml_and_helper(monkeypatch, capsys, no_aws_env):
    yaml = pytest.importorskip("yaml")
    from ray.runtime_env import RuntimeEnv

    path = ROOT / "cluster" / "runtime_env.yaml"
    rt = yaml.safe_load(path.read_text())
    RuntimeEnv(**rt)  # Ray accepts every field
    assert rt["working_dir"] == "." and not any(k.startswith("AWS_") for k in rt["env_vars"])
    assert rt["env_vars"]["MASKTHEFACE_DATA"].startswith("/")  # where the smoke tests find data
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    assert raysetup._main(["runtime-env", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "topsecret"
    assert out["env_vars"]["PYTHONUNBUFFERED"] == "1" and out["excludes"] == rt["excludes"]
    assert raysetup._main(["runtime-env", str(path), "--redacted"]) == 0
    assert "topsecret" not in capsys.readouterr().out
