"""jobs.common: URIs on local folders and a real S3 server, Ray start-up policy, Ray Data
through S3 with credentials in runtime_env, `ray job submit`, the dataclass CLI, progress
logging, and the cluster configuration files."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest

from jobs import common as c

ROOT = Path(__file__).resolve().parents[1]

_AWS = [k for k in c.S3_ENV_VARS]


@pytest.fixture
def no_aws_env(monkeypatch):
    for k in _AWS:
        monkeypatch.delenv(k, raising=False)


# ------------------------------------------------------------------------------ URIs

def test_is_s3_and_join_uri():
    assert c.is_s3("s3://b/k") and not c.is_s3("/tmp/s3://x") and not c.is_s3("gs://b")
    assert c.join_uri("s3://b/out/", "x", "/y.json") == "s3://b/out/x/y.json"
    assert c.join_uri("s3://b", "") == "s3://b"
    assert c.join_uri("/data/out", "a", "/b") == os.path.join("/data/out", "a", "b")
    assert c.join_uri(Path("/data"), "a") == os.path.join("/data", "a")
    assert c.path_to_uri("bucket/a/b.jpg", "s3://bucket/a") == "s3://bucket/a/b.jpg"
    assert c.path_to_uri("s3://bucket/a", "s3://x") == "s3://bucket/a"
    assert c.path_to_uri("/abs/a.jpg", "/abs") == "/abs/a.jpg"


def test_filesystem_for_local(tmp_path):
    import pyarrow.fs as pafs

    fs, path = c.filesystem_for(tmp_path)
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    assert c.filesystem_for(f"file://{tmp_path}/x")[1] == f"{tmp_path}/x"
    assert os.path.isabs(c.filesystem_for("relative/dir")[1])


def _make_tree(root: Path) -> None:
    for rel in ["b/2.JPG", "a/1.jpg", "a/notes.txt", "a/with space.png", "a/ünï.code.jpeg",
                "a/deep/x.webp", ".hidden/z.jpg", "a/._junk.jpg", "top.jpg"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())


def test_list_files_local(tmp_path, caplog):
    _make_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="jobs.common"):
        got = c.list_files(tmp_path, [".jpg", "JPEG", "png", "webp"])
    rel = [os.path.relpath(g, tmp_path) for g in got]
    assert rel == sorted(rel)
    assert set(rel) == {"a/1.jpg", "a/deep/x.webp", "a/with space.png", "a/ünï.code.jpeg",
                        "b/2.JPG", "top.jpg"}
    assert "left out 2 hidden" in caplog.text
    assert len(c.list_files(tmp_path, include_hidden=True)) == 9
    assert [os.path.basename(p) for p in c.list_files(tmp_path, recursive=False)] == ["top.jpg"]
    assert c.list_files(tmp_path / "top.jpg") == [str(tmp_path / "top.jpg")]
    assert c.list_files(tmp_path / "top.jpg", ".png") == []
    with pytest.raises(FileNotFoundError):
        c.list_files(tmp_path / "missing")


@dataclasses.dataclass(frozen=True)
class _Cfg:
    name: str = "x"
    far: tuple[float, ...] = (0.001,)


def test_bytes_and_json_local(tmp_path):
    uri = c.join_uri(str(tmp_path), "new", "deeper", "f.bin")
    assert not c.exists(uri)
    c.write_bytes(uri, b"\x00\x01")
    assert c.read_bytes(uri) == b"\x00\x01" and c.exists(uri)
    assert os.listdir(os.path.dirname(uri)) == ["f.bin"]  # no temp file left behind
    obj = {"a": np.float32(1.5), "b": np.arange(3), "cfg": _Cfg(), "p": Path("/x"), "s": {2, 1},
           "ü": "ünï"}
    c.write_json(c.join_uri(str(tmp_path), "s.json"), obj)
    back = c.read_json(c.join_uri(str(tmp_path), "s.json"))
    assert back == {"a": 1.5, "b": [0, 1, 2], "cfg": {"name": "x", "far": [0.001]}, "p": "/x",
                    "s": [1, 2], "ü": "ünï"}
    d = c.ensure_dir(c.join_uri(str(tmp_path), "made", "here"))
    assert os.path.isdir(d) and c.exists(d)


# ------------------------------------------------------------------------------ S3 settings

def _fs_options(fs) -> dict:
    return fs.__reduce__()[1][0]  # S3FileSystem pickles its options: what workers get


def test_s3_settings_from_env_and_options(monkeypatch, no_aws_env):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://specific:2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    fs, path = c.filesystem_for("s3://bkt/a/b/")
    o = _fs_options(fs)
    assert path == "bkt/a/b"
    assert (o["endpoint_override"], o["scheme"], o["access_key"], o["region"]) == \
        ("specific:2", "http", "envkey", "us-east-1")
    fs2, _ = c.filesystem_for("s3://bkt", {"key": "k", "secret": "s", "endpoint_url": "https://h:3",
                                          "client_kwargs": {"region_name": "eu-west-1"}})
    o2 = _fs_options(fs2)
    assert (o2["endpoint_override"], o2["scheme"], o2["access_key"], o2["secret_key"],
            o2["region"]) == ("h:3", "https", "k", "s", "eu-west-1")
    assert c.filesystem_for("s3://bkt")[0] is fs  # cached per settings
    with pytest.raises(ValueError):
        c.filesystem_for("s3://")


def test_s3_env_vars_redact_and_runtime_env(monkeypatch, no_aws_env):
    assert c.s3_env_vars() == {} and c.worker_runtime_env() == {}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "sessiontok")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://old:1")
    env = c.s3_env_vars({"key": "k2", "secret": "s2", "endpoint_url": "http://new:2"})
    assert env["AWS_ACCESS_KEY_ID"] == "k2" and env["AWS_SECRET_ACCESS_KEY"] == "s2"
    assert "AWS_SESSION_TOKEN" not in env  # the env's token belongs to the env's keys
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == "http://new:2"
    rt = c.worker_runtime_env(None, {"working_dir": ".", "env_vars": {"AWS_REGION": "x", "A": 1}})
    assert rt["working_dir"] == "." and rt["env_vars"]["AWS_REGION"] == "x"
    assert rt["env_vars"]["A"] == "1" and rt["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "topsecret"
    red = c.redact(rt)
    text = json.dumps(red)
    assert "topsecret" not in text and "sessiontok" not in text and "AKIAEXAMPLE" not in text
    assert red["env_vars"]["AWS_ACCESS_KEY_ID"] == "AKIA…"
    assert red["env_vars"]["AWS_ENDPOINT_URL_S3"] == "http://old:1"
    assert c.redact({"storage": [{"secret": "x", "key": "abcdefgh"}]}) == \
        {"storage": [{"secret": "***", "key": "abcd…"}]}


def test_without_job_conflicts(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"AWS_REGION": "a"}}}))
    rt = c._without_job_conflicts({"working_dir": ".", "pip": ["x"],
                                   "env_vars": {"AWS_REGION": "a", "B": "b"}})
    assert rt == {"pip": ["x"], "env_vars": {"B": "b"}}


# ------------------------------------------------------------------------------ real S3

def test_s3_roundtrip_with_options(s3_server, s3_bucket, no_aws_env):
    opts = s3_server.storage_options()
    base = c.join_uri(s3_bucket, "run 1")
    assert not c.exists(base, opts)
    c.ensure_dir(base, opts)  # bucket exists: fine, creates nothing
    with pytest.raises(FileNotFoundError):
        c.ensure_dir("s3://no-such-bucket-mtf/x", opts)
    for rel in ["b/2.JPG", "a/1.jpg", "a/ünï code.jpeg", "a/notes.txt", "a/._junk.jpg"]:
        c.write_bytes(c.join_uri(base, rel), rel.encode(), opts)
    got = c.list_files(base, ["jpg", ".jpeg"], storage_options=opts)
    assert got == sorted(got) and all(g.startswith(base + "/") for g in got)
    assert [g[len(base) + 1:] for g in got] == ["a/1.jpg", "a/ünï code.jpeg", "b/2.JPG"]
    assert c.read_bytes(got[1], opts) == "a/ünï code.jpeg".encode()
    assert c.exists(c.join_uri(base, "a"), opts) and c.exists(got[0], opts)
    assert not c.exists(c.join_uri(base, "zzz"), opts)
    assert c.list_files(base, recursive=False, storage_options=opts) == []
    c.write_json(c.join_uri(base, "summary.json"), {"n": np.int64(3)}, opts)
    assert c.read_json(c.join_uri(base, "summary.json"), opts) == {"n": 3}


def test_s3_via_environment(s3_bucket, s3_env):
    uri = c.join_uri(s3_bucket, "env.txt")
    c.write_bytes(uri, b"from env")
    assert c.read_bytes(uri) == b"from env" and c.list_files(s3_bucket) == [uri]


def test_s3_wrong_secret_is_refused(s3_server, s3_bucket, no_aws_env):
    if s3_server.kind != "seaweedfs":
        pytest.skip("moto accepts any credentials")
    bad = dict(s3_server.storage_options(), secret="wrong")
    with pytest.raises(OSError):
        c.write_bytes(c.join_uri(s3_bucket, "x"), b"x", bad)


# ------------------------------------------------------------------------------ Ray

def test_init_ray_reuses_session(ray_session):
    import ray

    info = c.init_ray(num_cpus=1)
    assert info.mode == "reused" and info.cpus == 2 and info.address == ray_session.address
    with c.ray_context() as info2:
        assert info2.mode == "reused"
    assert ray.is_initialized()  # a reused session is left running


def _env_probe(batch):
    # runs on a Ray worker: what does it see, and can it reach S3 through the env alone?
    from jobs import common as cc

    uri = batch["uri"][0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3", "")
    text = cc.read_bytes(uri).decode() if endpoint else ""
    return {"endpoint": np.array([endpoint] * len(batch["uri"])),
            "text": np.array([text] * len(batch["uri"]))}


def test_ray_data_parquet_roundtrip_on_s3(ray_session, s3_server, s3_bucket, no_aws_env):
    """The mechanism every job uses: an explicit filesystem for Ray Data I/O, and the S3
    settings in runtime_env for UDFs that open s3:// themselves.  The driver has no AWS_*
    variables and the session's workers were started without them."""
    import ray

    opts = s3_server.storage_options()
    out = c.join_uri(s3_bucket, "x")
    fs, path = c.filesystem_for(out, opts)
    rows = [{"key": f"id{i:03d}/img.jpg", "value": i, "blob": bytes([i % 256]) * 10} for i in range(200)]
    ray.data.from_items(rows, override_num_blocks=4).write_parquet(
        path, filesystem=fs, mode="overwrite", min_rows_per_file=100)
    files = c.list_files(out, ".parquet", storage_options=opts)
    assert files and all(f.startswith(out + "/") for f in files)
    back = ray.data.read_parquet(path, filesystem=fs).take_all()
    assert sorted((r["key"], r["value"], r["blob"]) for r in back) == \
        [(r["key"], r["value"], r["blob"]) for r in rows]

    # rerun with mode="overwrite": replaced, not appended
    ray.data.from_items(rows[:10]).write_parquet(path, filesystem=fs, mode="overwrite")
    assert ray.data.read_parquet(path, filesystem=fs).count() == 10

    probe_uri = c.join_uri(s3_bucket, "probe.txt")
    c.write_bytes(probe_uri, b"hello from s3", opts)
    ds = ray.data.from_items([{"uri": probe_uri}] * 4)
    bare = ds.map_batches(_env_probe, batch_size=2).take_all()
    assert {r["endpoint"] for r in bare} == {""}  # no credentials leak into workers
    with_env = ds.map_batches(_env_probe, batch_size=2,
                              runtime_env=c.worker_runtime_env(opts)).take_all()
    assert {r["endpoint"] for r in with_env} == {s3_server.endpoint_url}
    assert {r["text"] for r in with_env} == {"hello from s3"}


# ------------------------------------------------------------------------------ ray job submit

_JOB_PROBE = """
import os, ray, jobs.common as c
c.setup_logging("INFO")
info = c.init_ray()
print("mode", info.mode, "cpus", info.cpus)
uri = os.environ["MTF_PROBE_URI"]
print("driver", c.read_bytes(uri).decode())
print("worker", ray.get(ray.remote(lambda u: c.read_bytes(u).decode()).remote(uri)))
print("ok")
"""


@pytest.mark.slow
def test_ray_job_submit(ray_head, s3_server, s3_bucket, no_aws_env):
    """`ray job submit --working-dir .` against a token-protected head; the job's driver
    connects with init_ray (no runtime_env conflict) and reaches S3 from the driver and a
    worker with credentials that travel only in the job's runtime_env."""
    uri = c.join_uri(s3_bucket, "job.txt")
    c.write_bytes(uri, b"job-data", s3_server.storage_options())
    rt = c.worker_runtime_env(s3_server.storage_options(), {"env_vars": {"MTF_PROBE_URI": uri}})
    res = ray_head.submit([sys.executable, "-c", _JOB_PROBE], runtime_env=rt, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "mode connected cpus 2.0" in out and "driver job-data" in out
    assert "worker job-data" in out and "\nok" in out
    assert s3_server.secret not in out.split("Running entrypoint")[-1]  # not logged by us

    bad = ray_head.submit([sys.executable, "-c", "raise SystemExit(3)"], working_dir=None,
                          timeout=120)
    assert bad.returncode != 0


# ------------------------------------------------------------------------------ dataclass CLI

@dataclasses.dataclass(frozen=True)
class JobConfig:
    input: str = dataclasses.field(metadata={"help": "input URI"})
    output: str = dataclasses.field(metadata={"help": "output URI"})
    recipe: Literal["vggface2-mini-sm", "lfw-sm", "custom"] = "lfw-sm"
    per_identity: Optional[int] = None
    aligned: Optional[int] = dataclasses.field(default=160, metadata={"help": "crop size or none"})
    max_error_rate: float = 0.05
    smoke_test: bool = False
    resume: bool = True
    far: tuple[float, ...] = (0.001,)
    variants: tuple[str, ...] = ()
    size: tuple[int, int] = (160, 160)
    mixed: tuple[str, int] = ("a", 1)
    out_dir: Path = Path("out")
    hidden: int = dataclasses.field(default=7, metadata={"cli": False})


def test_dataclass_cli_roundtrip(capsys):
    cfg = c.parse_dataclass(JobConfig, [
        "--input", "s3://b/in", "--output=/tmp/o", "--recipe", "custom", "--per-identity", "42",
        "--aligned", "none", "--max_error_rate", "0.5", "--smoke-test", "--no-resume",
        "--far", "0.001", "0.0022", "--size", "112", "96", "--mixed", "b", "7",
        "--out-dir", "x/y"])
    assert cfg == JobConfig(input="s3://b/in", output="/tmp/o", recipe="custom", per_identity=42,
                            aligned=None, max_error_rate=0.5, smoke_test=True, resume=False,
                            far=(0.001, 0.0022), variants=(), size=(112, 96), mixed=("b", 7),
                            out_dir=Path("x/y"))
    dflt = c.parse_dataclass(JobConfig, ["--input", "i", "--output", "o"])
    assert dflt == JobConfig(input="i", output="o")
    assert isinstance(dflt.far, tuple)

    parser = c.add_dataclass_args(argparse.ArgumentParser(prog="job"), JobConfig)
    text = parser.format_help()
    assert "--per-identity" in text and "input URI" in text and "(default: 0.05)" in text
    assert "--no-smoke-test" in text and "--hidden" not in text
    for bad in (["--output", "o"],                                   # required missing
                ["--input", "i", "--output", "o", "--recipe", "x"],  # not a choice
                ["--input", "i", "--output", "o", "--per-identity", "many"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    capsys.readouterr()
    ns = parser.parse_args(["--input", "i", "--output", "o"])
    assert c.dataclass_from_args(JobConfig, ns, recipe="custom").recipe == "custom"


# ------------------------------------------------------------------------------ logging

def test_progress_logger_rate_eta_and_throttle(caplog):
    now = [0.0]
    p = c.ProgressLogger(total=100, what="images", every_s=10, clock=lambda: now[0],
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
    assert c.format_duration(3725.2) == "1h02m05s" and c.format_duration(None) == "?"
    assert "ETA" not in c.ProgressLogger(None, clock=lambda: 1.0).message()


def test_setup_logging_is_idempotent():
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        c.setup_logging("debug")
        c.setup_logging(logging.WARNING)
        assert len(root.handlers) <= max(1, len(before)) and root.level == logging.WARNING
        with pytest.raises(ValueError):
            c.setup_logging("loud")
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
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    assert c._main(["runtime-env", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "topsecret"
    assert out["env_vars"]["PYTHONUNBUFFERED"] == "1" and out["excludes"] == rt["excludes"]
    assert c._main(["runtime-env", str(path), "--redacted"]) == 0
    assert "topsecret" not in capsys.readouterr().out


def test_dataclass_cli_optional_fixed_tuple():
    import argparse
    import dataclasses

    from jobs.common import add_dataclass_args, dataclass_from_args

    @dataclasses.dataclass(frozen=True)
    class C:
        box: tuple[float, float, float, float] | None = (0.0, 0.0, 1.0, 1.0)

    p = argparse.ArgumentParser()
    add_dataclass_args(p, C)
    assert dataclass_from_args(C, p.parse_args([])).box == (0.0, 0.0, 1.0, 1.0)
    assert dataclass_from_args(C, p.parse_args(["--box", "none"])).box is None
    assert dataclass_from_args(C, p.parse_args(["--box", "1", "2", "3", "4.5"])).box == (1.0, 2.0, 3.0, 4.5)
    with pytest.raises(ValueError, match="takes 4 values"):
        dataclass_from_args(C, p.parse_args(["--box", "1", "2"]))
