"""masktheface.dataset_schema: the Parquet contract between mask_dataset and its readers.
No Ray, no data sets needed."""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from masktheface import dataset_schema as S

ROOT = Path(__file__).resolve().parents[1]


def _row(key: str, variant: str = "original", status: str = "ok", **kw) -> dict:
    return {S.KEY: key, S.IDENTITY: key.split("/")[0], S.SOURCE: f"/in/{key}", S.VARIANT: variant,
            S.MASKED: variant != "original", S.SEED: 0, S.STATUS: status, S.FORMAT: "jpg", S.FACE_COUNT: 1,
            S.MASKED_FACES: 0, S.FACES_FROM: "detector", S.FACES: [], S.SECONDS: 0.01, S.RUN_ID: "r", **kw}


def test_schema_names_types_and_light_import():
    schema = S.arrow_schema()
    assert tuple(schema.names) == S.column_names() and len(set(schema.names)) == len(schema.names)
    assert schema.field(S.LANDMARKS).type == pa.list_(pa.float32(), 136)
    assert schema.field(S.FACES).type == pa.list_(S.face_type())
    assert not schema.field(S.KEY).nullable and schema.field(S.IMAGE).nullable
    assert S.arrow_schema([S.KEY, S.STATUS]).names == [S.KEY, S.STATUS]
    with pytest.raises(S.SchemaError, match="not a column"):
        S.arrow_schema(["nope"])
    for purpose in ("resume", "train", "evaluate", "export"):
        assert set(S.columns_for(purpose)) <= set(S.column_names())
    assert set(S.ERROR_STATUSES) < set(S.STATUSES) and S.OK in S.STATUSES
    # the contract module itself does not pull pyarrow in (import masktheface stays light)
    code = "import sys, masktheface.dataset_schema; print('pyarrow' in sys.modules)"
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_table_from_rows_and_validate():
    t = S.table_from_rows([_row("a/1.jpg"), _row("a/1.jpg", "N95", "mask_failed", **{S.ERROR: "x"})])
    S.validate_table(t)
    assert t.schema.equals(S.arrow_schema()) and t.column(S.IMAGE).null_count == 2
    with pytest.raises(S.SchemaError, match="missing column"):
        S.validate_table(t.drop_columns([S.STATUS]))
    with pytest.raises(S.SchemaError, match="wrong column type"):
        S.validate_table(pa.table({S.KEY: [1]}), [S.KEY])
    with pytest.raises(S.SchemaError, match="unknown status"):
        S.validate_table(pa.table({S.STATUS: ["ok", "weird"]}), [S.STATUS])
    S.validate_table(t.select([S.KEY, S.VARIANT]), [S.KEY, S.VARIANT])  # a reader's subset


def test_data_files_and_read_table(tmp_path):
    rows = [_row(f"p{i}/{i}.jpg", v) for i in range(3) for v in ("original", "N95")]
    (tmp_path / "ds" / "sub").mkdir(parents=True)
    pq.write_table(S.table_from_rows(rows[:4]), tmp_path / "ds" / "part-a.parquet")
    pq.write_table(S.table_from_rows(rows[4:]), tmp_path / "ds" / "sub" / "part-b.parquet")
    for junk in ("_runs/x.parquet", ".tmp.parquet", "_summary.json", "notes.txt"):
        (tmp_path / "ds" / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / junk).write_text("not data")
    assert S.is_data_file("a/part.parquet") and not S.is_data_file("_runs/a.parquet")
    assert not S.is_data_file("x/.hidden.parquet") and not S.is_data_file("a.json")
    fs = pafs.LocalFileSystem()
    files = S.data_files(fs, str(tmp_path / "ds"))
    assert [Path(f).name for f in files] == ["part-a.parquet", "part-b.parquet"]
    assert S.data_files(fs, str(tmp_path / "absent")) == []
    assert S.data_files(fs, files[0]) == [files[0]]
    t = S.read_table(str(tmp_path / "ds"), [S.KEY, S.VARIANT], filter=pads.field(S.VARIANT) == "N95")
    assert t.schema.names == [S.KEY, S.VARIANT] and t.num_rows == 3
    assert S.read_table(str(tmp_path / "ds")).num_rows == 6
    assert S.read_table(str(tmp_path / "absent"), [S.KEY]).num_rows == 0


def test_a_column_added_later_reads_as_nulls_from_an_older_data_set(tmp_path):
    rows = [_row(f"p{i}/{i}.jpg", "original") for i in range(3)]
    old = S.table_from_rows(rows).drop_columns(list(S.ADDED_IN))    # as version 2 wrote it
    pq.write_table(old, tmp_path / "part-old.parquet")
    t = S.read_table(str(tmp_path), S.columns_for("train"))
    assert t.schema.equals(S.arrow_schema(S.columns_for("train")))
    assert t.column(S.SOURCE_QUALITY).to_pylist() == [None] * 3
    assert t.column(S.ALIGN_LANDMARKS).to_pylist() == [None] * 3
    assert S.read_table(str(tmp_path)).num_rows == 3
    # an older row aligns with its landmarks; a version-4 row with its own alignment points
    lm = np.arange(136, dtype=np.float32)
    np.testing.assert_array_equal(S.align_landmarks_68({S.LANDMARKS: lm, S.ALIGN_LANDMARKS: None}),
                                  lm.reshape(68, 2))
    np.testing.assert_array_equal(S.align_landmarks_68({S.LANDMARKS: lm, S.ALIGN_LANDMARKS: lm + 1}),
                                  (lm + 1).reshape(68, 2))
    assert S.align_landmarks_68({S.LANDMARKS: None}) is None
    assert all(v > 2 for v in S.ADDED_IN.values()) and S.SCHEMA_VERSION >= max(S.ADDED_IN.values())


def test_cell_helpers():
    lm = np.arange(136, dtype=np.float32)
    assert S.landmarks_68(lm.tolist()).shape == (68, 2) and S.landmarks_68(lm)[1, 0] == 2
    assert S.landmarks_68(None) is None and S.landmarks_68([1.0, 2.0]) is None
    assert S.landmarks_68([np.nan] * 136) is None
    assert S.box_4([1, 2, 3, 4]).tolist() == [1, 2, 3, 4] and S.box_4(None) is None


def test_docs_table_is_the_contract():
    """docs/mask_dataset.md shows the columns exactly as the module defines them."""
    text = (ROOT / "docs" / "mask_dataset.md").read_text()
    assert S.markdown_table() in text


#: readers of the data set: they name columns through the contract, never by literals
_READERS = ["jobs/evaluate.py", "jobs/export_images.py", "jobs/output_folder.py", "facenet/verify.py",
            "masktheface/dataset.py"]


#: dicts that are not data-set rows (run summaries, counts, the embedding cache's npz)
_NOT_ROWS = {"counts", "s", "prev", "z", "summary", "metrics", "m"}


@pytest.mark.parametrize("path", _READERS)
def test_readers_use_no_column_literals(path):
    # ("seconds" is also every summary's key: not checked)
    names = "|".join(re.escape(n) for n in S.column_names() if n != S.SECONDS)
    # a column read or written by a literal name: row["key"], row.get("key"), field("key"),
    # column("key")
    pattern = re.compile(rf"""(\w*)(\[\s*|\.get\(\s*|field\(\s*|column\(\s*)["']({names})["']""")
    src = (ROOT / path).read_text()
    hits = [m.group(0) for m in pattern.finditer(src) if m.group(1) not in _NOT_ROWS]
    assert not hits, f"{path} names columns by literal: {hits}"


def test_mask_dataset_writes_through_the_contract():
    from jobs import mask_stages

    src = inspect.getsource(mask_stages.MaskBatch)
    assert "S.table_from_rows" in src
