"""jobs.cli: the one command-line convention of every job, and each job's --help keeping it.
No Ray."""
from __future__ import annotations

import dataclasses
import enum
import importlib
import re
from pathlib import Path
from typing import Literal

import pytest

from jobs import cli

#: the jobs that follow the convention (train_facenet joins when it is committed)
JOBS = ["mask_dataset", "evaluate", "export_images", "train_facenet"]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class JobConfig:
    input: str | None = cli.option(None, "input URI", none_means="required")
    recipe: Literal["vggface2-mini-sm", "lfw-sm", "custom"] = cli.option("lfw-sm", "recipe")
    per_identity: int | None = cli.option(None, "images per identity", none_means="all")
    aligned: Literal[160, 112] | None = cli.option(160, "crop size or none")
    max_error_rate: float = cli.option(0.05, "error share, 5% at most")
    resume: bool = cli.option(True, "resume")
    far: tuple[float, ...] = cli.option((0.001,), "FAR targets")
    variants: tuple[str, ...] = cli.variants_option((), "variants")
    box: tuple[float, float, float, float] | None = cli.option((0.0, 0.0, 1.0, 1.0), "box")
    pair: tuple[str, int] = cli.option(("a", 1), "a name and a number")
    color: Color = cli.option(Color.RED, "a colour")
    out_dir: Path = cli.option(Path("out"), "a folder")
    hidden: int = cli.option(7, cli=False)
    ray_address: str | None = cli.ray_address_option()
    smoke_test: bool = cli.smoke_test_option("nothing")
    log_level: str = cli.log_level_option()

    def __post_init__(self) -> None:
        if self.per_identity is not None and self.per_identity < 1:
            raise ValueError("--per-identity must be >= 1")


def _parse(argv):
    return cli.parse_config(JobConfig, argv, prog="job")


def test_flags_from_the_config():
    cfg = _parse(["--input", "s3://b/in", "--recipe", "custom", "--per-identity", "42", "--aligned", "none",
                  "--max-error-rate", "0.5", "--no-resume", "--far", "0.001,0.0022", "--variants", "original, N95",
                  "--box", "none", "--pair", "b,7", "--color", "blue", "--out-dir", "x/y", "--smoke-test"])
    assert cfg == JobConfig(input="s3://b/in", recipe="custom", per_identity=42, aligned=None, max_error_rate=0.5,
                            resume=False, far=(0.001, 0.0022), variants=("original", "N95"), box=None,
                            pair=("b", 7), color=Color.BLUE, out_dir=Path("x/y"), smoke_test=True)
    assert _parse([]) == JobConfig() and _parse(["--box", "1,2,3,4.5"]).box == (1.0, 2.0, 3.0, 4.5)
    assert _parse(["--aligned", "112"]).aligned == 112


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "x"], "'x' is not one of vggface2-mini-sm, lfw-sm, custom"),
    (["--per-identity", "many"], "'many'"),
    (["--variants", "a,,b"], "empty entry"),
    (["--variants", "a,a"], "repeated a"),
    (["--far", "0.1", "0.2"], "unrecognized arguments: 0.2"),
    (["--box", "1,2"], "takes 4 comma-separated values"),
    (["--aligned", "5"], "'5' is not one of 160, 112"),
    (["--color", "green"], "'green'"),
    (["--hidden", "3"], "unrecognized arguments"),
    (["--input_", "x"], "unrecognized arguments"),
    (["--var", "x"], "unrecognized arguments"),  # no abbreviations: one spelling per flag
])
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    assert cli.run_cli(_parse, argv, prog="job") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_checks_are_usage_errors():
    with pytest.raises(cli.UsageError, match="per-identity"):
        _parse(["--per-identity", "0"])
    assert issubclass(cli.UsageError, ValueError)


def test_help_shows_each_default_once_and_groups(capsys):
    parser = cli.build_parser(JobConfig, prog="job", description="A job.")
    text = parser.format_help()
    assert "(default: on)" in text and "(default: 0.001)" in text and "(default: all)" in text
    assert "5% at most" in text and "--hidden" not in text and "--no-resume" in text
    assert "Ray:" in text and "run:" in text and "Exit status: 0 done, 2 usage error" in text
    for action in parser._actions:
        assert (action.help or "").count("(default:") <= 1, action.option_strings
    with pytest.raises(TypeError, match="no_"):
        cli.build_parser(dataclasses.make_dataclass("C", [("no_x", bool, cli.option(False, "x"))]), prog="c")


def test_run_cli_exit_statuses(capsys):
    def ok(argv):
        return {"n": 1}

    def usage(argv):
        raise cli.UsageError("--x is wrong")

    def failed(argv):
        raise cli.RunFailed("3 of 4 failed", {"n": 4})

    def bug(argv):
        raise KeyError("oops")

    def interrupted(argv):
        raise KeyboardInterrupt

    summarise = lambda s: f"done: {s['n']}"  # noqa: E731
    assert cli.run_cli(ok, [], prog="p", summarise=summarise) == 0
    assert capsys.readouterr().out == "done: 1\n"
    assert cli.run_cli(usage, [], prog="p", summarise=summarise) == 2
    out = capsys.readouterr()
    assert out.err == "p: error: --x is wrong\n" and out.out == ""
    assert cli.run_cli(failed, [], prog="p", summarise=summarise) == 3
    out = capsys.readouterr()
    assert out.out == "done: 4\n" and "p: failed: 3 of 4 failed" in out.err
    assert cli.run_cli(bug, [], prog="p") == 3
    assert "Traceback" in capsys.readouterr().err  # a bug keeps its traceback
    assert cli.run_cli(interrupted, [], prog="p") == 130
    assert cli.run_cli(_parse, ["--help"], prog="job") == 0


def test_list_and_format_helpers():
    assert cli.split_list(" a, b ,c") == ("a", "b", "c")
    for bad in ("", "a,", "a,a"):
        with pytest.raises(cli.UsageError):
            cli.split_list(bad, flag="--v")
    assert cli.percent(0.02345) == "2.3%" and cli.percent(None) == "-"
    assert cli.counts_text({"no_face": 2, "ok": 10}) == "ok 10, no_face 2" and cli.counts_text({}) == "none"


def test_smoke_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKTHEFACE_DATA", str(tmp_path))
    (tmp_path / "lfw").mkdir()
    assert cli.smoke_data("lfw") == tmp_path / "lfw"
    with pytest.raises(cli.UsageError, match=f"lfw/pairs.txt.*{re.escape(str(tmp_path))}.*MASKTHEFACE_DATA"):
        cli.smoke_data("lfw", "pairs.txt")


def test_refuse_with_smoke_test():
    cli.refuse_with_smoke_test(JobConfig(smoke_test=True), "input")
    cli.refuse_with_smoke_test(JobConfig(input="x"), "input")
    with pytest.raises(cli.UsageError, match="drop --input"):
        cli.refuse_with_smoke_test(JobConfig(smoke_test=True, input="x"), "input")


# ------------------------------------------------------------------------------ every job

def _help(job: str, capsys) -> str:
    mod = importlib.import_module(f"jobs.{job}")
    assert mod.cli(["--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("job", JOBS)
def test_every_job_keeps_the_convention(job, capsys):
    text = _help(job, capsys)
    flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
    assert "--smoke-test" in flags and "--log-level" in flags and "--output" in flags
    assert not any(f.startswith("--no-no-") for f in flags) and not any("_" in f for f in flags)
    # one name per thing: the old spellings are gone
    assert not flags & {"--address", "--actors", "--cpus-per-actor", "--no-face-is-error"}
    for block in re.split(r"\n  (?=--)", text):
        assert block.count("(default:") <= 1, block
    if "--variants" in flags:
        assert re.search(r"--variants A,B,\.\.\.", text)
    if job in ("mask_dataset", "evaluate"):  # the two Ray Data jobs share the Ray flags
        assert {"--ray-address", "--num-cpus", "--num-actors", "--actor-cpus", "--batch-size",
                "--max-error-rate", "--seed"} <= flags
    if job == "train_facenet":  # Ray Train: workers instead of actors
        assert {"--ray-address", "--num-cpus", "--num-workers", "--cpus-per-worker", "--use-gpu", "--seed"} <= flags
    mod = importlib.import_module(f"jobs.{job}")
    assert callable(mod.main) and callable(mod.summarise) and mod.PROG == f"python -m jobs.{job}"


def test_mask_dataset_documents_detector_and_upsample(capsys):
    text = " ".join(_help("mask_dataset", capsys).split())
    assert "--detector {hog,cnn} face detector: dlib's HOG" in text
    assert "--upsample {auto,0,1,2} detector upsampling: auto = none first" in text
