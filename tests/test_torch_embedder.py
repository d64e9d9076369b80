"""facenet.embed.TorchEmbedder: the converted dlib network and our own checkpoints embed
through the same face-finding path as dlib's embedder."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def lfw_faces(data_dir):
    root = data_dir / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        pytest.skip(f"LFW not found at {root}")
    people = sorted(p for p in os.listdir(root) if len(os.listdir(root / p)) >= 2)[:6]
    return [cv2.imread(str(root / p / sorted(os.listdir(root / p))[0])) for p in people]


def test_dlib_torch_matches_dlib(lfw_faces):
    from facenet.embed import DlibEmbedder, load_embedder
    ref = DlibEmbedder(fallback_box=None)
    ours = load_embedder("dlib-torch")
    a, b = ref.embed_with_status(lfw_faces), ours.embed_with_status(lfw_faces)
    assert a.status == b.status and a.method == b.method
    ok = np.isfinite(a.embeddings).all(1)
    assert ok.sum() >= 5
    cos = (a.embeddings[ok] * b.embeddings[ok]).sum(1)
    assert cos.min() > 0.9999, cos


def test_checkpoint_embeds_with_its_own_crop(lfw_faces, tmp_path):
    from facenet import model as fmodel
    from facenet.embed import load_embedder
    torch.manual_seed(0)
    net = fmodel.build_model("mobilefacenet").eval()
    path = tmp_path / "m.pt"
    fmodel.save_checkpoint(path, net, train_config={"model": "mobilefacenet"}, epoch=1)
    emb = load_embedder(str(path))
    assert emb.alignment == "arcface" and emb.chip_size == 112 and emb.dim == net.embedding_dim
    res = emb.embed_with_status(lfw_faces[:3])
    assert set(res.status) == {"ok"}
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from facenet.embed import load_embedder
    with pytest.raises((FileNotFoundError, ValueError, RuntimeError)) as info:
        load_embedder(str(tmp_path / "nope.pt"))
    assert "nope.pt" in str(info.value)
