"""The jobs' shared plumbing under one name, for scripts that want a single import.

The code lives in one module per responsibility; import from there in new code:

* :mod:`jobs.storage` - URIs, filesystems (local, ``s3://``), listing, bytes/JSON, S3
  credentials for workers, redaction;
* :mod:`jobs.raysetup` - ``init_ray`` / ``ray_context`` (the start-up policy) and the
  ``runtime-env`` helper for ``ray job submit``;
* :mod:`jobs.progress` - logging set-up, progress lines, durations;
* :mod:`jobs.cli` - the command-line convention of every job (flags from a config
  dataclass, exit statuses, smoke-test data).
"""
from __future__ import annotations

from jobs.cli import (  # noqa: F401
                      EXIT_FAILED,
                      EXIT_OK,
                      EXIT_USAGE,
                      RunFailed,
                      UsageError,
                      build_parser,
                      config_from_args,
                      option,
                      parse_config,
                      refuse_with_smoke_test,
                      run_cli,
                      smoke_data,
                      split_list,
)
from jobs.progress import ProgressLogger, format_duration, setup_logging  # noqa: F401
from jobs.raysetup import RayInfo, init_ray, ray_context, runtime_env_with_s3  # noqa: F401
from jobs.storage import (  # noqa: F401
                      S3_ENV_VARS,
                      ensure_dir,
                      exists,
                      filesystem_for,
                      inside,
                      is_local,
                      is_s3,
                      join_uri,
                      list_files,
                      overlaps,
                      path_to_uri,
                      read_bytes,
                      read_json,
                      redact,
                      s3_env_vars,
                      worker_runtime_env,
                      write_bytes,
                      write_json,
)
