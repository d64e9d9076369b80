"""Storage for the jobs: URIs (local paths, ``file://``, ``s3://``, other pyarrow schemes),
filesystems, listing, bytes and JSON in and out, and S3 credentials for Ray workers.

Ray-free: nothing here imports ``ray``; ``pyarrow`` is imported inside the functions that
need it, so ``import jobs.storage`` costs milliseconds.

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
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import json
import logging
import os
import posixpath
import re
import tempfile
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow.fs

log = logging.getLogger(__name__)

__all__ = [
    "S3_ENV_VARS", "ensure_dir", "exists", "filesystem_for", "inside", "is_s3", "is_local", "join_uri",
    "list_files", "overlaps", "path_to_uri", "read_bytes", "read_json", "redact", "s3_env_vars",
    "worker_runtime_env", "write_bytes", "write_json",
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


def is_local(uri: str | os.PathLike) -> bool:
    """True for a local path or ``file://`` URI."""
    return not _is_remote(os.fspath(uri))


def _location(uri: str) -> tuple[str, tuple[str, ...]]:
    """``(scheme, path parts)`` with local paths made absolute (scheme ``""``)."""
    if _is_remote(uri):
        scheme = _scheme(uri)
        return scheme, tuple(p for p in uri[len(scheme) + 3:].split("/") if p)
    return "", tuple(p for p in _local_path(uri).split(os.sep) if p)


def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` is ``root`` or lies under it (same scheme; local paths are
    compared after ``abspath``, symlinks are not resolved)."""
    (s1, p1), (s2, p2) = _location(os.fspath(path)), _location(os.fspath(root))
    return s1 == s2 and p1[: len(p2)] == p2


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when one of two locations lies inside the other (or they are the same)."""
    return inside(a, b) or inside(b, a)


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
