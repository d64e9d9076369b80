"""Ray start-up for the jobs: one policy for joining or starting a Ray, and the
``runtime_env`` a job submitted to a cluster needs.

:func:`init_ray` (or the :func:`ray_context` manager) reuses an initialised Ray, connects
to ``address`` / ``$RAY_ADDRESS`` (as set under ``ray job submit``), and otherwise starts
a private local Ray with ``address="local"`` (a bare ``ray.init()`` would join any stray
cluster on the machine).  ``ray`` is imported inside the functions.

Two lines Ray prints on every run, and what we do about them:

* ``Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to
  opt out`` (and ``Generated new authentication token and saved to ~/.ray/auth_token``):
  Ray 2.60 prints it when it turns token auth on by default for a new local cluster.  A
  private local Ray started here sets ``RAY_AUTH_MODE=token`` explicitly (auth stays on:
  other users of the machine cannot reach its ports) and, when no token exists yet,
  gives this process a fresh one in ``RAY_AUTH_TOKEN`` instead of writing a file into
  your home: the warning is gone at its cause.
* ``Actor with class name: 'MapWorker(...)' ... has constructor arguments in the object
  store and max_restarts > 0``: printed by Ray's C++ core for every Ray Data actor pool,
  because Ray Data itself passes its map function by object reference and restarts dead
  actors (``max_restarts=-1``).  The references are owned by the driver, so they live as
  long as the job; turning restarts off would only lose fault tolerance on a cluster.  It
  is harmless and cannot be silenced from Python without hiding real errors, so it is
  explained here and in docs/mask_dataset.md instead.

``python -m jobs.raysetup runtime-env FILE`` prints a runtime_env YAML as JSON with the
submitting shell's ``AWS_*`` variables added, for ``ray job submit --runtime-env-json``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from jobs.storage import redact, worker_runtime_env

log = logging.getLogger(__name__)

__all__ = ["RayInfo", "init_ray", "ray_context", "runtime_env_with_s3"]


def _private_token_auth() -> None:
    """Token auth for a private local Ray, chosen explicitly (so Ray does not warn that
    it chose it by default); a fresh token for this process when none exists, rather than
    Ray's side effect of writing ``~/.ray/auth_token``.  Must run before ``import ray``:
    Ray caches its auth mode at import (the jobs import ray only through init_ray); the
    raylet and every worker inherit this process's environment.  When ray was imported
    earlier, Ray's own default applies (and its warning is printed)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return  # the user decided (token or disabled): respect it
    os.environ["RAY_AUTH_MODE"] = "token"
    has_token = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                 or (Path.home() / ".ray" / "auth_token").is_file())
    if not has_token:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


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
       ``num_cpus`` and a capped object store, no dashboard unless asked for, token
       authentication on (see :func:`_private_token_auth`).

    The job-level ``runtime_env`` always carries the S3 variables of this process /
    ``storage_options`` (:func:`worker_runtime_env`), so workers see the endpoint."""
    addr = address or os.environ.get("RAY_ADDRESS") or None
    if (not addr or addr == "local") and "ray" not in sys.modules:
        # Ray reads its auth mode when imported: set it first (see _private_token_auth)
        _private_token_auth()
    import ray

    t0 = time.perf_counter()
    if ray.is_initialized():
        mode = "reused"
    else:
        rt = worker_runtime_env(storage_options, runtime_env)
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
    info = init_ray(address, num_cpus, runtime_env, **kwargs)
    import ray  # after init_ray, which must see Ray un-imported (see _private_token_auth)

    try:
        yield info
    finally:
        if info.mode != "reused" and ray.is_initialized():
            ray.shutdown()


# --------------------------------------------------------------------------------------
# `python -m jobs.raysetup runtime-env FILE`: a runtime_env for `ray job submit`
# --------------------------------------------------------------------------------------

def runtime_env_with_s3(path: str | os.PathLike) -> dict[str, Any]:
    """The runtime_env YAML at ``path`` plus the S3 variables of the submitting shell
    (:func:`s3_env_vars`; entries written in the file win)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        rt = yaml.safe_load(fh) or {}
    return worker_runtime_env(None, rt)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.raysetup")
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
