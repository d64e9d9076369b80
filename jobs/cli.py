"""One command-line convention for every job (mask_dataset, evaluate, export_images,
train_facenet), and the helper that implements it.

A job is
    * a frozen dataclass config, one field per flag, each made with :func:`option` (help
      text, group, what ``none`` means); ``__post_init__`` checks values and raises
      :class:`UsageError`; checks that need the outside world (a file exists, a data set
      holds a variant) run in the job before any work starts, and raise UsageError too;
    * ``main(argv=None) -> dict``: :func:`parse_config`, run, return the summary dict;
      raises :class:`UsageError` before any work, :class:`RunFailed` after;
    * ``cli(argv=None) -> int``: ``return run_cli(main, argv, prog=..., summarise=...)``,
      with ``if __name__ == "__main__": sys.exit(cli())``.

Flags
    * one spelling each, ``--field-name`` from the field ``field_name``; the same name means
      the same thing in every job: ``--output``, ``--seed``, ``--variants``,
      ``--ray-address``, ``--num-cpus`` (a private local Ray), ``--num-actors``,
      ``--actor-cpus``, ``--batch-size``, ``--max-error-rate``, ``--smoke-test``,
      ``--log-level`` (use the ``*_option()`` helpers below for them);
    * a list is ONE comma-separated value: ``--variants original,N95``, ``--far
      0.001,0.0022``, ``--folds 0,1``; an empty entry or a repeat is an error (a
      repeatable flag is kept for values that hold commas themselves: mask_dataset's
      ``--code``);
    * booleans are ``--flag`` / ``--no-flag``; no field may be named ``no_...`` (so there
      is never a ``--no-no-...``);
    * ``Optional`` fields take the word ``none``; ``Literal[...]`` fields list their choices;
    * ``--help`` shows each default once, written by this module: help texts never mention
      defaults; a field whose default is None says what None means with
      ``option(none_means=...)``;
    * ``--smoke-test`` in every job: a tiny end-to-end run on the shared data
      (:func:`smoke_data`, found through ``$MASKTHEFACE_DATA``), refusing the data flags it
      replaces (:func:`refuse_with_smoke_test`).

Exit status (:func:`run_cli`)
    0 success; 2 usage error (a bad flag or input found before any work, argparse's own
    errors too): one line ``<prog>: error: ...``, no traceback; 3 failed run
    (:class:`RunFailed`: ``<prog>: failed: ...``; any other exception is a bug and keeps
    its traceback); 130 interrupted.  On success, and after a RunFailed that carries a
    summary, the job's short human summary goes to stdout: where the output went and a
    few rounded figures.  Logs go to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "EXIT_OK", "EXIT_USAGE", "EXIT_FAILED", "EXIT_INTERRUPTED", "UsageError", "RunFailed",
    "option", "build_parser", "config_from_args", "parse_config", "split_list",
    "refuse_with_smoke_test", "smoke_data", "run_cli", "percent", "counts_text",
    "output_option", "seed_option", "variants_option", "ray_address_option", "num_cpus_option",
    "num_actors_option", "actor_cpus_option", "batch_size_option", "max_error_rate_option",
    "smoke_test_option", "log_level_option",
]

EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130

#: argument groups, shown in this order after the job's own options
RAY_GROUP = "Ray"
RUN_GROUP = "run"
_NONE_WORDS = {"none", "null"}
#: the end of every job's --help
EPILOG = ("Lists are one comma-separated value (--variants original,N95).  Exit status: 0 done, "
          "2 usage error (nothing was started), 3 the run failed (see the message; what was written "
          "is kept).")


class UsageError(ValueError):
    """A bad flag or input, found before any work (exit status 2)."""


class RunFailed(RuntimeError):
    """The run started and did not deliver (exit status 3); ``summary`` holds what it
    wrote, when it got that far."""

    def __init__(self, message: str, summary: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary


# ------------------------------------------------------------------------------------------
# fields
# ------------------------------------------------------------------------------------------

def option(default: Any = dataclasses.MISSING, help: str = "", *, group: str | None = None,
           none_means: str | None = None, metavar: str | None = None, cli: bool = True,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its command-line metadata (see the module docstring)."""
    meta = {"help": help, "group": group, "none_means": none_means, "metavar": metavar, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def output_option(what: str) -> Any:
    return option(None, f"{what} (a folder or s3://bucket/prefix)", none_means="required, "
                  "except with --smoke-test: a temporary folder")


def seed_option() -> Any:
    return option(0, "run seed: every random draw derives from it, the item's key and a name")


def variants_option(default: tuple[str, ...], what: str) -> Any:
    return option(default, what, metavar="A,B,...")


def ray_address_option() -> Any:
    return option(None, "Ray cluster to connect to", group=RAY_GROUP,
                  none_means="$RAY_ADDRESS, else a private local Ray")


def num_cpus_option() -> Any:
    return option(None, "CPUs of a private local Ray (ignored when connecting)", group=RAY_GROUP,
                  none_means="all cores")


def num_actors_option(what: str, none_means: str) -> Any:
    return option(None, f"{what} actors", group=RAY_GROUP, none_means=none_means)


def actor_cpus_option(default: float) -> Any:
    return option(default, "CPUs reserved per actor", group=RAY_GROUP)


def batch_size_option(default: int, what: str) -> Any:
    return option(default, what, group=RAY_GROUP)


def max_error_rate_option(default: float, what: str) -> Any:
    return option(default, f"fail (exit status 3) when more than this share of {what}", group=RUN_GROUP)


def smoke_test_option(what: str) -> Any:
    return option(False, f"a tiny end-to-end run ({what}) on the shared data "
                  "($MASKTHEFACE_DATA or ../shared/data), into a temporary folder unless "
                  "--output is given", group=RUN_GROUP)


def log_level_option() -> Any:
    return option("INFO", "logging level (DEBUG, INFO, WARNING, ERROR)", group=RUN_GROUP)


# ------------------------------------------------------------------------------------------
# types -> converters
# ------------------------------------------------------------------------------------------

def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported union {tp!r}")
    return tp, False


def _scalar(tp: Any) -> Callable[[str], Any]:
    """str -> value of ``tp`` (bool words, Literal members, Enum names/values, callables)."""
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        conv = _scalar(type(choices[0]))

        def literal(s: str) -> Any:
            v = conv(s)
            if v not in choices:
                raise ValueError(f"{s!r} is not one of {', '.join(map(str, choices))}")
            return v
        return literal
    if tp is bool:
        def boolean(s: str) -> bool:
            v = s.strip().lower()
            if v in ("1", "true", "yes", "on"):
                return True
            if v in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{s!r} is not a yes/no value")
        return boolean
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return lambda s: tp[s] if s in tp.__members__ else tp(s)
    if callable(tp):
        return tp
    raise TypeError(f"unsupported field type {tp!r}")


def split_list(text: str, *, flag: str = "list") -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``; an empty entry or a repeat is a UsageError."""
    items = tuple(p.strip() for p in str(text).split(","))
    head = f"{flag}: " if flag else ""
    if not text.strip() or any(not p for p in items):
        raise UsageError(f"{head}empty entry in {text!r} (a comma-separated list, e.g. a,b)")
    dup = sorted({p for p in items if items.count(p) > 1})
    if dup:
        raise UsageError(f"{head}repeated {', '.join(dup)} in {text!r}")
    return items


def _list_converter(item: Any, optional: bool, length: int | None) -> Callable[[str], Any]:
    conv = _scalar(item) if not isinstance(item, tuple) else None

    def parse_list(s: str) -> Any:
        if optional and s.strip().lower() in _NONE_WORDS:
            return None
        try:
            parts = split_list(s, flag="") if length is None else tuple(p.strip() for p in s.split(","))
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if length is not None and len(parts) != length:
            raise argparse.ArgumentTypeError(f"takes {length} comma-separated values, got {len(parts)}")
        try:
            if conv is not None:
                return tuple(conv(p) for p in parts)
            return tuple(_scalar(t)(p) for t, p in zip(item, parts))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{s!r}: {e}") from None
    return parse_list


def _typed(conv: Callable[[str], Any], optional: bool) -> Callable[[str], Any]:
    """argparse ``type=``: ``none`` -> None when optional; a ValueError's own message."""
    def parse(s: str) -> Any:
        if optional and s.strip().lower() in _NONE_WORDS:
            return None
        try:
            return conv(s)
        except (ValueError, TypeError, KeyError) as e:  # their messages name the value
            raise argparse.ArgumentTypeError(str(e).strip('"') or f"bad value {s!r}") from None
    return parse


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


# ------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------

def _argument(f: dataclasses.Field, tp: Any) -> tuple[list[str], dict[str, Any]]:
    """``(flags, add_argument kwargs)`` for one field."""
    if f.name.startswith("no_"):
        raise TypeError(f"field {f.name!r}: booleans are --x/--no-x, so no field is named no_...")
    tp, optional = _unwrap_optional(tp)
    flag = "--" + f.name.replace("_", "-")
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
    shown = meta.get("none_means") if default is None else _show(default)
    help_text = (meta.get("help") or "").rstrip()
    if shown:
        help_text = f"{help_text} (default: {shown})".strip()
    kw: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text.replace("%", "%%")}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif origin in (tuple, list):
        variadic = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        item = args[0] if variadic else args
        kw["type"] = _list_converter(item, optional, None if variadic else len(args))
        kw["metavar"] = meta.get("metavar") or ("A,B,..." if variadic else ",".join("X" * len(args)))
    else:
        conv = _scalar(tp)
        kw["type"] = _typed(conv, optional)
        if origin is typing.Literal:
            kw["metavar"] = "{" + ",".join(map(str, args)) + ("," + "none" if optional else "") + "}"
        elif meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
    return [flag], kw


def build_parser(cls: type, *, prog: str, description: str | None = None,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one flag per field of the dataclass ``cls`` (fields with
    ``option(cli=False)`` are left out), grouped: the job's own options, then ``Ray``,
    then ``run``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    epilog = epilog if epilog is not None else EPILOG
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    fields = [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli", True)]
    order = {None: 0, RAY_GROUP: 2, RUN_GROUP: 3}
    for f in sorted(fields, key=lambda f: order.get(f.metadata.get("group"), 1)):
        flags, kw = _argument(f, hints[f.name])
        group = f.metadata.get("group")
        target = parser
        if group:
            target = groups.get(group) or groups.setdefault(group, parser.add_argument_group(group))
        action = target.add_argument(*flags, **kw)
        action.help = kw["help"]  # BooleanOptionalAction appends its own "(default: ...)"
    return parser


def config_from_args(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from a parsed namespace (``overrides`` win); a ValueError raised by
    the config's checks becomes a :class:`UsageError`."""
    kwargs = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    kwargs.update(overrides)
    try:
        return cls(**kwargs)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def parse_config(cls: type, argv: Sequence[str] | None = None, *, prog: str,
                 description: str | None = None, epilog: str | None = None) -> Any:
    """``config_from_args(cls, build_parser(cls, ...).parse_args(argv))``."""
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog)
    return config_from_args(cls, parser.parse_args(argv))


# ------------------------------------------------------------------------------------------
# smoke tests
# ------------------------------------------------------------------------------------------

def refuse_with_smoke_test(cfg: Any, *fields: str) -> None:
    """UsageError when ``cfg.smoke_test`` is set together with any of ``fields`` (the data
    flags the smoke test brings itself)."""
    if not getattr(cfg, "smoke_test", False):
        return
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    given = [f for f in fields if getattr(cfg, f) != defaults.get(f)]
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise UsageError(f"--smoke-test brings its own data; drop {flags} (or drop --smoke-test)")


def smoke_data(*parts: str) -> Path:
    """``<data>/<parts>`` for a smoke test, or a UsageError that says where it looked and
    how to point at the data (locally and under ``ray job submit``)."""
    from masktheface.datadir import DATA_ENV, data_candidates, shared_data

    p = shared_data(*parts)
    if p is not None:
        return p
    looked = ", ".join(str(c) for c in data_candidates())
    raise UsageError(
        f"--smoke-test needs {'/'.join(parts)} from the shared data folder; looked in {looked}. "
        f"Set {DATA_ENV} to the folder that holds it (under `ray job submit`: env_vars in "
        "cluster/runtime_env.yaml)")


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------

def percent(x: float | None, digits: int = 1) -> str:
    """``0.0234`` -> ``"2.3%"``; None -> ``"-"``."""
    return "-" if x is None else f"{100.0 * float(x):.{digits}f}%"


def counts_text(counts: Mapping[str, int]) -> str:
    """``{"ok": 230, "no_face": 10}`` -> ``"ok 230, no_face 10"`` (largest first)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v}" for k, v in items) or "none"


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None, *,
            prog: str, summarise: Callable[[Any], str] | None = None) -> int:
    """Run ``main(argv)`` and map the outcome to an exit status (module docstring); print
    ``summarise(result)`` to stdout on success."""
    try:
        result = main(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error it printed itself (2)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as e:
        if e.summary is not None and summarise is not None:
            print(summarise(e.summary))
        print(f"{prog}: failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug or a broken environment, not a user mistake: keep the traceback
        traceback.print_exc()
        print(f"{prog}: failed with an unexpected error (traceback above)", file=sys.stderr)
        return EXIT_FAILED
    if summarise is not None:
        print(summarise(result))
    return EXIT_OK
