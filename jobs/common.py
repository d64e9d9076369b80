"""Shared plumbing for the Ray jobs: storage URIs, the Ray start-up policy, logging,
progress, and a command line generated from each job's frozen config dataclass.

This is the only shared module that knows Ray; ``ray`` and ``pyarrow`` are imported
inside the functions that need them, so ``import jobs.common`` costs milliseconds.

Storage
-------
Every path a job takes is a URI: a local path (``/data/lfw``, ``file:///data/lfw``),
``s3://bucket/prefix``, or any other scheme ``pyarrow.fs`` resolves (``gs://``).
:func:`filesystem_for` returns ``(pyarrow.fs.FileSystem, path)``; pass both to Ray Data
(``read_binary_files(path, filesystem=fs)``, ``write_parquet(path, filesystem=fs)``).

S3 uses pyarrow's native ``S3FileSystem``, not s3fs: it is what Ray Data uses by default,
it does its I/O in C++ threads (no fsspec event loop to carry into forked workers), and
it pickles *with* its endpoint and keys, so a filesystem built on the driver reaches
every Ray worker intact.  pyarrow does not read ``AWS_ENDPOINT_URL`` itself (measured:
pyarrow 26 with only the env set goes to ``bucket.s3.us-east-1.amazonaws.com``), which
is why Ray Data's own ``read_parquet("s3://…")`` misses a non-AWS endpoint; we read the
endpoint from the environment (``AWS_ENDPOINT_URL_S3`` first, then ``AWS_ENDPOINT_URL``)
or from explicit options and pass it through.  Ray Data's ``include_paths`` gives
``bucket/key`` without the scheme; :func:`path_to_uri` turns it back into a URI.

Credentials reach Ray workers through ``runtime_env={"env_vars": …}``
(:func:`worker_runtime_env`), never through the driver's environment: workers of a Ray
that was started earlier (the test session, a cluster) do not inherit it.  Secret values
are never logged: log ``redact(d)``.

Ray
---
:func:`init_ray` (or the :func:`ray_context` manager) reuses an initialised Ray, connects
to ``address`` / ``$RAY_ADDRESS`` (as set under ``ray job submit``), and otherwise starts
a private local Ray with ``address="local"`` (a bare ``ray.init()`` would join any stray
cluster on the machine).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import functools
import json
import logging
import math
import os
import posixpath
import re
import sys
import tempfile
import time
import types
import typing
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow.fs

log = logging.getLogger(__name__)

__all__ = [
    "S3_ENV_VARS",
    "RayInfo",
    "ProgressLogger",
    "add_dataclass_args",
    "dataclass_from_args",
    "parse_dataclass",
    "ensure_dir",
    "exists",
    "filesystem_for",
    "format_duration",
    "init_ray",
    "is_s3",
    "join_uri",
    "list_files",
    "path_to_uri",
    "ray_context",
    "read_bytes",
    "read_json",
    "redact",
    "s3_env_vars",
    "setup_logging",
    "worker_runtime_env",
    "write_bytes",
    "write_json",
]

# --------------------------------------------------------------------------------------
# URIs and filesystems
# --------------------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

#: The environment variables that configure S3 access, in the names botocore/s3fs use.
#: ``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL`` (the AWS SDK's rule).
S3_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_CA_BUNDLE",
)


def _scheme(uri: str) -> str:
    m = _SCHEME_RE.match(str(uri))
    return m.group(1).lower() if m else ""


def is_s3(uri: str | os.PathLike) -> bool:
    """True for ``s3://bucket[/key]``."""
    return _scheme(os.fspath(uri)) == "s3"


def _is_remote(uri: str) -> bool:
    return _scheme(uri) not in ("", "file")


def _local_path(uri: str) -> str:
    if _scheme(uri) == "file":
        uri = uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri))


def join_uri(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or URI: ``join_uri("s3://b/out", "x", "y.json")``
    -> ``"s3://b/out/x/y.json"``.  Leading slashes of ``parts`` never reset the base."""
    base = os.fspath(base)
    clean = [str(p).strip("/") for p in parts if str(p).strip("/")]
    if _is_remote(base):
        scheme = _scheme(base)
        rest = base[len(scheme) + 3:].rstrip("/")
        return f"{scheme}://" + posixpath.join(rest, *clean) if clean else f"{scheme}://{rest}"
    return os.path.join(base, *clean) if clean else base


def path_to_uri(path: str, like: str | os.PathLike) -> str:
    """Turn a filesystem path from :func:`filesystem_for`'s filesystem (or Ray Data's
    ``include_paths`` column, ``bucket/key``) back into a URI of ``like``'s scheme."""
    like = os.fspath(like)
    if _is_remote(like):
        scheme = _scheme(like)
        if _scheme(path) == scheme:
            return path
        return f"{scheme}://{path.lstrip('/')}"
    return path


def _s3_settings(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for ``pyarrow.fs.S3FileSystem`` from explicit options (s3fs
    style ``key/secret/token/endpoint_url/client_kwargs.region_name`` or pyarrow style
    ``access_key/secret_key/…``) falling back to the ``AWS_*`` environment."""
    so = dict(storage_options or {})
    ck = dict(so.get("client_kwargs") or {})
    env = os.environ

    def pick(*candidates: Any) -> Any:
        for c in candidates:
            if c not in (None, ""):
                return c
        return None

    endpoint = pick(so.get("endpoint_url"), so.get("endpoint_override"), ck.get("endpoint_url"),
                    env.get("AWS_ENDPOINT_URL_S3"), env.get("AWS_ENDPOINT_URL"))
    key = pick(so.get("key"), so.get("access_key"))
    secret = pick(so.get("secret"), so.get("secret_key"))
    token = pick(so.get("token"), so.get("session_token"))
    if key is None and secret is None:  # explicit keys never mix with the environment's
        key, secret = env.get("AWS_ACCESS_KEY_ID") or None, env.get("AWS_SECRET_ACCESS_KEY") or None
        token = token or env.get("AWS_SESSION_TOKEN") or None
    region = pick(so.get("region"), so.get("region_name"), ck.get("region_name"),
                  env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION"))

    kw: dict[str, Any] = {}
    if so.get("anon") or so.get("anonymous"):
        kw["anonymous"] = True
    elif key and secret:
        kw["access_key"], kw["secret_key"] = str(key), str(secret)
        if token:
            kw["session_token"] = str(token)
    # else: pyarrow's default AWS credential chain (profile, instance role, …)
    if endpoint:
        endpoint = str(endpoint)
        m = _SCHEME_RE.match(endpoint)
        kw["scheme"] = m.group(1).lower() if m else str(so.get("scheme") or "https")
        if m:
            endpoint = endpoint[m.end():]
        kw["endpoint_override"] = endpoint.rstrip("/")
        kw["region"] = str(region or "us-east-1")  # custom endpoints ignore it; SigV4 needs one
    elif region:
        kw["region"] = str(region)
    for name in ("allow_bucket_creation", "allow_bucket_deletion", "connect_timeout",
                 "request_timeout", "force_virtual_addressing"):
        if name in so:
            kw[name] = so[name]
    return kw


@functools.lru_cache(maxsize=32)
def _s3_filesystem(items: tuple[tuple[str, Any], ...]) -> "pyarrow.fs.FileSystem":
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(**dict(items))


def filesystem_for(uri: str | os.PathLike, storage_options: Mapping[str, Any] | None = None
                   ) -> tuple["pyarrow.fs.FileSystem", str]:
    """``(filesystem, path)`` for a local path, ``file://``, ``s3://bucket/key`` or another
    pyarrow URI.  The path has no scheme and no trailing slash (``bucket/key`` for S3,
    an absolute path locally), as Ray Data and ``pyarrow.fs`` expect it.

    S3 endpoint and keys come from ``storage_options`` or the ``AWS_*`` environment
    (see :data:`S3_ENV_VARS`); without a custom endpoint or region the bucket's region
    is looked up (real AWS)."""
    import pyarrow.fs as pafs

    uri = os.fspath(uri)
    scheme = _scheme(uri)
    if scheme in ("", "file"):
        return pafs.LocalFileSystem(), _local_path(uri)
    if scheme == "s3":
        path = uri[len("s3://"):].strip("/")
        if not path:
            raise ValueError(f"no bucket in {uri!r}")
        kw = _s3_settings(storage_options)
        if "region" not in kw and "endpoint_override" not in kw:
            try:
                kw["region"] = pafs.resolve_s3_region(path.split("/", 1)[0])
            except Exception:  # offline or no permission: let the SDK decide
                log.debug("could not resolve the region of %s", uri)
        return _s3_filesystem(tuple(sorted(kw.items()))), path
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def _norm_exts(extensions: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if extensions is None:
        return None
    if isinstance(extensions, str):
        extensions = [extensions]
    return tuple(("." + e.lstrip(".")).lower() for e in extensions)


def list_files(uri: str | os.PathLike, extensions: Iterable[str] | str | None = None,
               recursive: bool = True, *, include_hidden: bool = False,
               storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Sorted full URIs of the files under ``uri`` (or ``[uri]`` if it is a file).

    ``extensions`` (``[".jpg", "png"]``) match case-insensitively.  Names with a path
    component starting with ``.`` (``.DS_Store``, macOS ``._x.jpg``) are left out unless
    ``include_hidden``; how many were left out is logged.  A missing ``uri`` raises
    ``FileNotFoundError``."""
    import pyarrow.fs as pafs

    uri = os.fspath(uri)
    fs, root = filesystem_for(uri, storage_options)
    exts = _norm_exts(extensions)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type == pafs.FileType.File:
        infos = [info]
        root = posixpath.dirname(root)
    else:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
    out, hidden = [], 0
    for fi in infos:
        if fi.type != pafs.FileType.File:
            continue
        rel = fi.path[len(root):].lstrip("/") if fi.path.startswith(root) else fi.base_name
        if not include_hidden and any(part.startswith(".") for part in rel.split("/")):
            hidden += 1
            continue
        if exts is not None and not fi.path.lower().endswith(exts):
            continue
        out.append(path_to_uri(fi.path, uri) if _is_remote(uri) else fi.path)
    if hidden:
        log.info("list_files(%s): left out %d hidden file(s)", uri, hidden)
    return sorted(out)


def exists(uri: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True if a file or a directory/prefix exists at ``uri``."""
    import pyarrow.fs as pafs

    fs, path = filesystem_for(uri, storage_options)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = filesystem_for(uri, storage_options)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str | os.PathLike, data: bytes,
                storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``data`` to ``uri``, creating local parent folders.  Local writes are atomic
    (temporary file + rename), so a reader never sees half a file; object stores are
    atomic per object already.  Returns ``uri``."""
    uri = os.fspath(uri)
    if not _is_remote(uri):
        path = _local_path(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return uri
    fs, path = filesystem_for(uri, storage_options)
    with fs.open_output_stream(path) as f:
        f.write(data)
    return uri


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (PurePath,)):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, enum.Enum):
        return o.value
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(uri: str | os.PathLike, obj: Any, storage_options: Mapping[str, Any] | None = None,
               *, indent: int | None = 2) -> str:
    """Write ``obj`` as UTF-8 JSON (dataclasses, numpy values, paths and sets allowed)."""
    text = json.dumps(obj, indent=indent, default=_json_default, ensure_ascii=False, allow_nan=True)
    return write_bytes(uri, (text + "\n").encode("utf-8"), storage_options)


def read_json(uri: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> Any:
    return json.loads(read_bytes(uri, storage_options).decode("utf-8"))


def ensure_dir(uri: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> str:
    """Create a local folder (with parents).  Object-store prefixes exist implicitly, so
    for ``s3://`` this only checks that the bucket exists (it never creates buckets)."""
    import pyarrow.fs as pafs

    uri = os.fspath(uri)
    if not _is_remote(uri):
        os.makedirs(_local_path(uri), exist_ok=True)
        return uri
    fs, path = filesystem_for(uri, storage_options)
    if is_s3(uri):
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"bucket {bucket!r} does not exist ({uri})")
        return uri
    fs.create_dir(path, recursive=True)
    return uri


# --------------------------------------------------------------------------------------
# Credentials for workers, and redaction
# --------------------------------------------------------------------------------------

def s3_env_vars(storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``AWS_*`` variables (:data:`S3_ENV_VARS`) set in this process, overridden by
    explicit ``storage_options`` (s3fs style), for ``runtime_env={"env_vars": …}``.

    An explicit endpoint is written to both ``AWS_ENDPOINT_URL`` and
    ``AWS_ENDPOINT_URL_S3`` so that a stale value of the more specific one cannot win."""
    env = {k: os.environ[k] for k in S3_ENV_VARS if os.environ.get(k)}
    so = dict(storage_options or {})
    ck = dict(so.get("client_kwargs") or {})
    key = so.get("key") or so.get("access_key")
    secret = so.get("secret") or so.get("secret_key")
    token = so.get("token") or so.get("session_token")
    endpoint = so.get("endpoint_url") or so.get("endpoint_override") or ck.get("endpoint_url")
    region = so.get("region") or so.get("region_name") or ck.get("region_name")
    if key or secret:
        env.pop("AWS_SESSION_TOKEN", None)
    for name, value in (("AWS_ACCESS_KEY_ID", key), ("AWS_SECRET_ACCESS_KEY", secret),
                        ("AWS_SESSION_TOKEN", token), ("AWS_REGION", region)):
        if value:
            env[name] = str(value)
    if endpoint:
        endpoint = str(endpoint)
        if not _SCHEME_RE.match(endpoint):
            endpoint = f"{so.get('scheme', 'https')}://{endpoint}"
        env["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL_S3"] = endpoint
    return env


_SECRET_KEY_RE = re.compile(r"secret|token|password|passwd|credential|private|signature|authorization",
                            re.IGNORECASE)
_KEY_ID_RE = re.compile(r"^(aws_access_key_id|access_key|key|key_id|access_key_id)$", re.IGNORECASE)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (dicts/lists nested) safe to log: values under secret-looking
    keys become ``"***"``, access-key ids keep their first four characters."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            ks = str(k)
            if isinstance(v, (Mapping, list, tuple)):
                out[k] = redact(v)
            elif v in (None, ""):
                out[k] = v
            elif _SECRET_KEY_RE.search(ks):
                out[k] = "***"
            elif _KEY_ID_RE.match(ks):
                out[k] = str(v)[:4] + "…"
            else:
                out[k] = v
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    return obj


def worker_runtime_env(storage_options: Mapping[str, Any] | None = None,
                       runtime_env: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``runtime_env`` with the S3 variables (:func:`s3_env_vars`) added to its
    ``env_vars`` (explicit entries win).  Use it where workers must see S3 settings:
    ``ds.map_batches(..., runtime_env=worker_runtime_env(opts))`` or
    ``ray_remote_args={"runtime_env": worker_runtime_env(opts)}``.  ``{}`` when empty."""
    rt = {k: v for k, v in dict(runtime_env or {}).items() if v is not None}
    env = {**s3_env_vars(storage_options), **dict(rt.get("env_vars") or {})}
    if env:
        rt["env_vars"] = {k: str(v) for k, v in env.items()}
    return rt


# --------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RayInfo:
    """How :func:`init_ray` got its Ray: ``mode`` is ``"reused"`` (already initialised),
    ``"connected"`` (an existing cluster) or ``"local"`` (started here)."""

    mode: str
    address: str
    cpus: float
    gpus: float
    seconds: float


def _default_object_store_bytes() -> int:
    """Ray's own default is 30% of RAM; cap it at 4 GiB for a local run (a laptop also
    needs memory for the workers themselves) and never go under 256 MiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30
    return int(min(max(0.3 * total, 256 * 2**20), 4 * 2**30))


def _without_job_conflicts(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """Inside ``ray job submit`` the job's runtime_env is merged with the driver's and any
    overlap is an error; the job's values win (they are what this driver sees anyway)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw or not runtime_env:
        return runtime_env
    try:
        job_rt = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return runtime_env
    rt = {k: v for k, v in runtime_env.items() if k == "env_vars" or k not in job_rt}
    job_env = job_rt.get("env_vars") or {}
    env = {k: v for k, v in (rt.get("env_vars") or {}).items() if k not in job_env}
    rt.pop("env_vars", None)
    if env:
        rt["env_vars"] = env
    return rt


def init_ray(address: str | None = None, num_cpus: int | None = None,
             runtime_env: Mapping[str, Any] | None = None, *,
             object_store_memory: int | None = None,
             storage_options: Mapping[str, Any] | None = None,
             **init_kwargs: Any) -> RayInfo:
    """Initialise Ray by the project's policy and say how.

    1. Already initialised (a test session, a notebook): reuse it.  Its workers keep the
       environment they started with, so jobs pass :func:`worker_runtime_env` to the
       operators that touch S3.
    2. ``address`` or ``$RAY_ADDRESS`` (set under ``ray job submit``): connect.
    3. Otherwise start a private local Ray, ``address="local"`` (never a stray cluster),
       ``num_cpus`` and a capped object store, no dashboard unless asked for.

    The job-level ``runtime_env`` always carries the S3 variables of this process /
    ``storage_options`` (:func:`worker_runtime_env`), so workers see the endpoint."""
    import ray

    t0 = time.perf_counter()
    if ray.is_initialized():
        mode = "reused"
    else:
        rt = worker_runtime_env(storage_options, runtime_env)
        addr = address or os.environ.get("RAY_ADDRESS") or None
        if addr and addr != "local":
            if num_cpus is not None:
                log.warning("num_cpus=%s ignored: connecting to the cluster at %s", num_cpus, addr)
            rt = _without_job_conflicts(rt)
            log.info("connecting to Ray at %s (runtime_env %s)", addr, redact(rt))
            ray.init(address=addr, runtime_env=rt or None, **init_kwargs)
            mode = "connected"
        else:
            init_kwargs.setdefault("include_dashboard", False)
            osm = object_store_memory or _default_object_store_bytes()
            log.info("starting a local Ray (num_cpus=%s, object store %d MiB, runtime_env %s)",
                     num_cpus, osm // 2**20, redact(rt))
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=osm,
                     runtime_env=rt or None, **init_kwargs)
            mode = "local"
    res = ray.cluster_resources()
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:  # pragma: no cover - older/odd contexts
        gcs = ""
    info = RayInfo(mode=mode, address=gcs, cpus=float(res.get("CPU", 0.0)),
                   gpus=float(res.get("GPU", 0.0)), seconds=time.perf_counter() - t0)
    log.info("Ray %s at %s: %g CPU, %g GPU (%.1f s)", mode, gcs, info.cpus, info.gpus, info.seconds)
    return info


@contextlib.contextmanager
def ray_context(address: str | None = None, num_cpus: int | None = None,
                runtime_env: Mapping[str, Any] | None = None, **kwargs: Any) -> Iterator[RayInfo]:
    """:func:`init_ray` for the ``with`` block; shuts Ray down afterwards only if this
    call started or connected it (a reused session is left running)."""
    import ray

    info = init_ray(address, num_cpus, runtime_env, **kwargs)
    try:
        yield info
    finally:
        if info.mode != "reused" and ray.is_initialized():
            ray.shutdown()


# --------------------------------------------------------------------------------------
# Logging and progress
# --------------------------------------------------------------------------------------

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = "INFO") -> None:
    """Configure the root logger once (stderr, timestamps); later calls only change the
    level.  Chatty client libraries are kept at WARNING."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "s3fs", "urllib3", "aiobotocore", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def format_duration(seconds: float | None) -> str:
    """``3725.2`` -> ``"1h02m05s"``; ``None``/inf/nan -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class ProgressLogger:
    """Log ``done/total``, items/s and ETA at most every ``every_s`` seconds.

    >>> p = ProgressLogger(total=1000, what="images", every_s=10)
    >>> for batch in batches: p.update(len(batch))
    >>> summary = p.finish()   # {"done", "total", "seconds", "per_second"}

    ``clock`` is injectable for tests.  Rates are averages since the start, which stay
    steady while Ray warms up its actors."""

    def __init__(self, total: int | None = None, *, what: str = "items", every_s: float = 10.0,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic,
                 prefix: str = "") -> None:
        self.total = total
        self.what = what
        self.every_s = float(every_s)
        self.logger = logger or log
        self.clock = clock
        self.prefix = prefix
        self.done = 0
        self.start = clock()
        self._last = self.start

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float:
        el = self.elapsed
        return self.done / el if el > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def message(self) -> str:
        head = f"{self.prefix}{self.done}"
        if self.total is not None:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            head += f"/{self.total} {self.what} ({pct:.1f}%)"
        else:
            head += f" {self.what}"
        msg = f"{head}, {self.rate:.1f} {self.what}/s, elapsed {format_duration(self.elapsed)}"
        if self.total is not None:
            msg += f", ETA {format_duration(self.eta_s)}"
        return msg

    def update(self, n: int = 1) -> bool:
        """Count ``n`` more items; returns True when it logged."""
        self.done += int(n)
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self.logger.info(self.message())
            return True
        return False

    def finish(self) -> dict[str, Any]:
        self.logger.info(self.message())
        return {"done": self.done, "total": self.total, "seconds": round(self.elapsed, 3),
                "per_second": round(self.rate, 3)}


# --------------------------------------------------------------------------------------
# A command line from a dataclass
# --------------------------------------------------------------------------------------

_NONE_WORDS = {"none", "null"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != len(typing.get_args(tp)):
            if len(args) != 1:
                raise TypeError(f"unsupported union {tp!r}")
            return args[0], True
        raise TypeError(f"unsupported union {tp!r}")
    return tp, False


def _converter(tp: Any, optional: bool) -> Callable[[str], Any]:
    if tp is bool:
        def conv(s: str) -> Any:
            v = s.strip().lower()
            if optional and v in _NONE_WORDS:
                return None
            if v in ("1", "true", "yes", "on"):
                return True
            if v in ("0", "false", "no", "off"):
                return False
            raise ValueError(s)
        conv.__name__ = "bool"
        return conv
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        base = lambda s: tp[s] if s in tp.__members__ else tp(s)  # noqa: E731
    elif callable(tp):
        base = tp
    else:
        raise TypeError(f"unsupported field type {tp!r}")

    if not optional:
        return base

    def conv_opt(s: str) -> Any:
        return None if s.strip().lower() in _NONE_WORDS else base(s)

    conv_opt.__name__ = getattr(base, "__name__", "value")
    return conv_opt


def _flag_names(f: dataclasses.Field) -> list[str]:
    custom = f.metadata.get("flag")
    if custom:
        return [custom] if isinstance(custom, str) else list(custom)
    dashed = "--" + f.name.replace("_", "-")
    under = "--" + f.name
    return [dashed] if dashed == under else [dashed, under]


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add one option per field of the dataclass ``cls``: ``--field-name`` (and the
    ``--field_name`` spelling).  Supported types: str, int, float, bool
    (``--x/--no-x``), ``Optional[T]`` (``none`` gives None), ``tuple[T, ...]`` /
    ``tuple[T1, T2]`` / ``list[T]`` (space-separated values), ``Literal[...]`` (choices),
    Enum, ``pathlib.Path``.  Help comes from ``field(metadata={"help": ...})``; fields
    without a default are required; ``metadata={"cli": False}`` hides a field and
    ``metadata={"flag": "--x"}`` renames it."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli", True) is False:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        kw: dict[str, Any] = {"dest": f.name}
        help_text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
            help_text = (help_text + " " if help_text else "") + "(default: %(default)s)"
        kw["help"] = help_text or None

        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kw["choices"] = list(args)
            kw["type"] = _converter(type(args[0]), optional)
            if optional:
                kw["choices"].append(None)
        elif origin in (tuple, list):
            if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
                kw["type"], kw["nargs"] = _converter(args[0], False), "*" if default == () else "+"
            elif origin is tuple and args:
                if len(set(args)) != 1 or optional:
                    kw["type"] = str  # converted position by position in dataclass_from_args
                else:
                    kw["type"] = _converter(args[0], False)
                # an optional fixed-length tuple also takes the single word "none"
                kw["nargs"] = "+" if optional else len(args)
            else:
                kw["type"] = _converter(args[0] if args else str, False)
                kw["nargs"] = "*" if not default else "+"
            kw["metavar"] = f.name.upper()
        else:
            kw["type"] = _converter(tp, optional)
        parser.add_argument(*_flag_names(f), **kw)
    return parser


def dataclass_from_args(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from the parsed namespace (fields missing from it keep their
    defaults; sequences become tuples for tuple fields; ``overrides`` win)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        tp, optional = _unwrap_optional(hints[f.name])
        origin = typing.get_origin(tp)
        if value is not None and origin is tuple:
            args = typing.get_args(tp)
            fixed = bool(args) and not (len(args) == 2 and args[1] is Ellipsis)
            if fixed and optional and isinstance(value, list):
                if len(value) == 1 and str(value[0]).strip().lower() in _NONE_WORDS:
                    kwargs[f.name] = None
                    continue
                if len(value) != len(args):
                    raise ValueError(f"--{f.name.replace('_', '-')} takes {len(args)} values or 'none', "
                                     f"got {len(value)}")
            if fixed and (len(set(args)) > 1 or optional):
                value = tuple(_converter(a, False)(v) for a, v in zip(args, value))
            else:
                value = tuple(value)
        elif value is not None and origin is list:
            value = list(value)
        kwargs[f.name] = value
    kwargs.update(overrides)
    return cls(**kwargs)


def parse_dataclass(cls: type, argv: Sequence[str] | None = None, *, prog: str | None = None,
                    description: str | None = None) -> Any:
    """``dataclass_from_args(cls, parser.parse_args(argv))`` with a parser built by
    :func:`add_dataclass_args`; ``description`` defaults to the class docstring."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description or (cls.__doc__ or "").strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, cls)
    return dataclass_from_args(cls, parser.parse_args(argv))


# --------------------------------------------------------------------------------------
# `python -m jobs.common runtime-env FILE`: a runtime_env for `ray job submit`
# --------------------------------------------------------------------------------------

def runtime_env_with_s3(path: str | os.PathLike) -> dict[str, Any]:
    """The runtime_env YAML at ``path`` plus the S3 variables of the submitting shell
    (:func:`s3_env_vars`; entries written in the file win)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        rt = yaml.safe_load(fh) or {}
    return worker_runtime_env(None, rt)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.common")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("runtime-env", help="print FILE (runtime_env YAML) as JSON with this "
                       "shell's AWS_* variables added, for ray job submit --runtime-env-json")
    p.add_argument("file")
    p.add_argument("--redacted", action="store_true", help="mask secret values (for a look)")
    args = parser.parse_args(argv)
    rt = runtime_env_with_s3(args.file)
    print(json.dumps(redact(rt) if args.redacted else rt))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
