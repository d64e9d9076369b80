"""facenet.losses against naive loops over all triplets, and global mining across two gloo
processes against one process on the concatenated batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F

from facenet.losses import (
    MINING_MODES,
    all_gather_embeddings,
    identity_gather,
    mine_triplets,
    pairwise_sq_dists,
    triplet_loss,
)

MARGIN = 0.2


def _data(seed: int, n_ids: int = 4, per_id: int = 3, singletons: int = 1, dim: int = 4,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rows (N, dim) and shuffled labels: n_ids identities x per_id images plus
    ``singletons`` identities with one image (they can anchor nothing)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(n_ids).repeat_interleave(per_id), n_ids + torch.arange(singletons)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    emb = F.normalize(torch.randn(labels.numel(), dim, generator=g, dtype=dtype), dim=1)
    return emb, labels


# ------------------------------------------------------------------ naive references


def _d(e: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return ((e[i] - e[j]) ** 2).sum()


def _roles(labels: torch.Tensor) -> tuple[list[tuple[int, int]], dict[int, list[int]]]:
    """Ordered (a, p) pairs whose anchor has a negative, and each anchor's negatives."""
    lab = labels.tolist()
    n = len(lab)
    negs = {a: [j for j in range(n) if lab[j] != lab[a]] for a in range(n)}
    pairs = [(a, p) for a in range(n) for p in range(n) if a != p and lab[a] == lab[p] and negs[a]]
    return pairs, negs


def _term(dap: torch.Tensor, dan: torch.Tensor, soft: bool) -> torch.Tensor:
    return F.softplus(dap - dan) if soft else torch.clamp(dap - dan + MARGIN, min=0)


def naive_batch_hard(e, labels, soft=False):
    pairs, negs = _roles(labels)
    terms = []
    for a in sorted({a for a, _ in pairs}):
        dap = max((_d(e, a, p) for b, p in pairs if b == a), key=lambda t: t.item())
        dan = min((_d(e, a, n) for n in negs[a]), key=lambda t: t.item())
        terms.append(_term(dap, dan, soft))
    return torch.stack(terms).mean(), len(terms)


def naive_semi_hard(e, labels, soft=False):
    pairs, negs = _roles(labels)
    terms, fallback = [], 0
    for a, p in pairs:
        dap = _d(e, a, p)
        outside = [_d(e, a, n) for n in negs[a] if _d(e, a, n).item() > dap.item()]
        if outside:
            dan = min(outside, key=lambda t: t.item())
        else:
            fallback += 1
            dan = max((_d(e, a, n) for n in negs[a]), key=lambda t: t.item())
        terms.append(_term(dap, dan, soft))
    return torch.stack(terms).mean(), len(terms), fallback


def naive_batch_all(e, labels, soft=False):
    pairs, negs = _roles(labels)
    terms = [_term(_d(e, a, p), _d(e, a, n), soft) for a, p in pairs for n in negs[a]]
    t = torch.stack(terms)
    if soft:
        return t.mean(), len(terms)
    active = t[t > 0]
    return (active.sum() / len(active) if len(active) else t.sum() * 0), len(terms)


def _grad(loss: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, e)
    return g


# ------------------------------------------------------------------ single process vs naive


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "batch_all"])
def test_deterministic_modes_match_naive_loop(mining, seed, soft):
    emb, labels = _data(seed, n_ids=3 + seed % 3, per_id=2 + seed % 2)
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    loss, stats = triplet_loss(e1, labels, margin=MARGIN, mining=mining, soft_margin=soft)
    if mining == "batch_hard":
        ref, n_trip = naive_batch_hard(e2, labels, soft)
    elif mining == "semi_hard":
        ref, n_trip, fallback = naive_semi_hard(e2, labels, soft)
        assert stats["n_fallback"] == fallback
    else:
        ref, n_trip = naive_batch_all(e2, labels, soft)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    assert stats["loss"] == pytest.approx(ref.item(), abs=1e-12)
    assert stats["n_triplets"] == n_trip
    torch.testing.assert_close(_grad(loss, e1), _grad(ref, e2), atol=1e-12, rtol=1e-9)
    assert stats["n_skipped_anchors"] == 1  # the singleton
    assert 0.0 <= stats["active_fraction"] <= 1.0


def test_semi_hard_fallback_is_exercised():
    # Identity 0's two images are far apart and every negative sits close to one of
    # them: no negative is farther than the positive, so the fallback rule decides.
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.9, 0.1], [0.8, -0.2]], dtype=torch.float64)
    emb = F.normalize(emb, dim=1).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    loss, stats = triplet_loss(emb, labels, mining="semi_hard")
    ref, _, fallback = naive_semi_hard(emb, labels)
    assert fallback > 0 and stats["n_fallback"] == fallback
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)


def test_batch_all_active_count_and_distances():
    emb, labels = _data(3, n_ids=4, per_id=3)
    _, stats = triplet_loss(emb, labels, mining="batch_all")
    pairs, negs = _roles(labels)
    triplets = [(a, p, n) for a, p in pairs for n in negs[a]]
    dap = torch.stack([_d(emb, a, p) for a, p, _ in triplets])
    dan = torch.stack([_d(emb, a, n) for a, _, n in triplets])
    assert stats["n_active"] == int((dap - dan + MARGIN > 0).sum())
    assert stats["mean_pos_dist"] == pytest.approx(dap.mean().item(), abs=1e-12)
    assert stats["mean_neg_dist"] == pytest.approx(dan.mean().item(), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_random_violating_picks_violators_and_matches_naive_loss(seed):
    emb, labels = _data(seed, n_ids=4, per_id=3, dim=3)
    gen = torch.Generator().manual_seed(100 + seed)
    t = mine_triplets(pairwise_sq_dists(emb), labels, "random_violating", margin=MARGIN, generator=gen)
    pairs, negs = _roles(labels)
    with_violator = {(a, p) for a, p in pairs
                     if any(float(_d(emb, a, n) - _d(emb, a, p)) < MARGIN for n in negs[a])}
    chosen = list(zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist()))
    assert {(a, p) for a, p, _ in chosen} == with_violator and len(chosen) == len(with_violator)
    assert t.n_unmatched == len(pairs) - len(with_violator)
    for a, p, n in chosen:
        assert labels[n] != labels[a] and labels[p] == labels[a] and a != p
        assert float(_d(emb, a, n) - _d(emb, a, p)) < MARGIN
    # the loss over the same draw equals the naive loss over the chosen triplets
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    loss, stats = triplet_loss(e1, labels, mining="random_violating",
                               generator=torch.Generator().manual_seed(100 + seed))
    ref = torch.stack([_term(_d(e2, a, p), _d(e2, a, n), False) for a, p, n in chosen]).mean()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    assert stats["n_triplets"] == len(chosen) and stats["active_fraction"] == 1.0
    torch.testing.assert_close(_grad(loss, e1), _grad(ref, e2), atol=1e-12, rtol=1e-9)


def test_random_violating_is_seeded_and_covers_every_candidate():
    emb, labels = _data(7, n_ids=3, per_id=3, singletons=0, dim=2)
    d = pairwise_sq_dists(emb)

    def draw(seed):
        t = mine_triplets(d, labels, "random_violating", generator=torch.Generator().manual_seed(seed))
        return torch.stack([t.anchor, t.positive, t.negative])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    seen: dict[tuple[int, int], set[int]] = {}
    for s in range(200):
        for a, p, n in draw(s).T.tolist():
            seen.setdefault((a, p), set()).add(n)
    pairs, negs = _roles(labels)
    for (a, p), got in seen.items():
        cands = {n for n in negs[a] if float(d[a, n] - d[a, p]) < MARGIN}
        assert got == cands  # 200 draws over <= 6 candidates: every one is drawn


@pytest.mark.parametrize("mining", MINING_MODES)
def test_chunking_does_not_change_anything(mining):
    emb, labels = _data(11, n_ids=5, per_id=4, dim=3)
    out = []
    for chunk in (5, 64, 2**24):
        loss, stats = triplet_loss(emb, labels, mining=mining, chunk_elements=chunk,
                                   generator=torch.Generator().manual_seed(3))
        out.append((loss.item(), stats))
    for loss, stats in out[1:]:
        assert loss == pytest.approx(out[0][0], abs=1e-12)
        assert stats == pytest.approx(out[0][1], abs=1e-12)


def test_no_triplets_gives_zero_loss_with_graph():
    emb = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=1).requires_grad_(True)
    for mining in MINING_MODES:
        loss, stats = triplet_loss(emb, torch.arange(4), mining=mining)  # no positives
        loss.backward()
        assert loss.item() == 0.0 and stats["n_triplets"] == 0 and stats["active_fraction"] == 0.0
        assert stats["n_skipped_anchors"] == 4
        assert torch.count_nonzero(emb.grad) == 0
        emb.grad = None


def test_stats_are_floats_and_half_input_is_computed_in_float32():
    emb, labels = _data(2, dtype=torch.float32)
    loss, stats = triplet_loss(emb.half(), labels.numpy(), mining="semi_hard")
    assert loss.dtype == torch.float32
    ref, _ = triplet_loss(emb.half().float(), labels, mining="semi_hard")
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert all(type(v) is float for v in stats.values())
    for key in ("loss", "active_fraction", "n_triplets", "mean_pos_dist", "mean_neg_dist",
                "batch_pos_dist", "batch_neg_dist", "n_skipped_anchors", "n_embeddings"):
        assert key in stats


def test_bad_arguments():
    emb, labels = _data(0)
    with pytest.raises(ValueError, match="unknown mining"):
        triplet_loss(emb, labels, mining="hardest")
    with pytest.raises(ValueError, match="labels"):
        triplet_loss(emb, labels[:-1])


def test_all_gather_without_process_group_is_identity():
    emb, labels = _data(0)
    out = all_gather_embeddings(emb, labels)
    assert out[0] is emb and out[1] is labels and out[2] == slice(0, emb.shape[0])
    assert identity_gather(emb, labels)[2] == slice(0, emb.shape[0])


# ------------------------------------------------------------------ global mining, 2 gloo ranks

IN_DIM, OUT_DIM = 6, 4
# (mining, rows per rank, identities interleaved across ranks, grad_scale inside the gather)
CASES = [
    ("batch_hard", (9, 9), False, False),
    ("semi_hard", (9, 9), False, False),
    ("random_violating", (9, 9), False, False),
    ("batch_all", (9, 9), False, False),
    ("batch_hard", (12, 6), True, False),   # unequal batches, identities on both ranks
    ("semi_hard", (6, 12), True, True),     # the gradient scaled by the gather instead
]


def _case_data(i: int, sizes: tuple[int, int], interleave: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Global inputs (N, IN_DIM) float32 and labels: identities of 3 images each, either
    contiguous (each rank holds its own identities, as PKSampler plans) or shuffled."""
    g = torch.Generator().manual_seed(1000 + i)
    n = sum(sizes)
    labels = torch.arange(n) // 3
    if interleave:
        labels = labels[torch.randperm(n, generator=g)]
    return torch.randn(n, IN_DIM, generator=g), labels


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(IN_DIM, OUT_DIM)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model()
        ddp = DDP(model)
        results = []
        for i, (mining, sizes, interleave, scale_in_gather) in enumerate(CASES):
            x, y = _case_data(i, sizes, interleave)
            lo = sum(sizes[:rank])
            local = slice(lo, lo + sizes[rank])
            ddp.zero_grad(set_to_none=True)
            emb = F.normalize(ddp(x[local]), dim=1)
            if scale_in_gather:
                def gather(e, lab):
                    return all_gather_embeddings(e, lab, grad_scale=float(world))
            else:
                gather = all_gather_embeddings
            loss, stats = triplet_loss(emb, y[local], mining=mining, gather=gather,
                                       generator=torch.Generator().manual_seed(i))
            (loss if scale_in_gather else loss * world).backward()
            results.append({"loss": loss.item(), "stats": stats,
                            "grads": [p.grad.detach().clone() for p in model.parameters()]})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_global_mining_two_gloo_ranks_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for i, (mining, sizes, interleave, _) in enumerate(CASES):
        x, y = _case_data(i, sizes, interleave)
        model = _model()
        loss, stats = triplet_loss(F.normalize(model(x), dim=1), y, mining=mining,
                                   generator=torch.Generator().manual_seed(i))
        loss.backward()
        assert stats["n_triplets"] > 0 and stats["n_active"] > 0
        for r in ranks:
            res = r[i]
            assert res["loss"] == pytest.approx(loss.item(), abs=1e-6), (mining, sizes)
            assert res["stats"]["n_triplets"] == stats["n_triplets"]
            assert res["stats"]["n_embeddings"] == sum(sizes)
            for got, want in zip(res["grads"], model.parameters()):
                torch.testing.assert_close(got, want.grad, atol=1e-6, rtol=1e-5, msg=f"{mining} {sizes}")
        assert ranks[0][i]["loss"] == ranks[1][i]["loss"]  # bit-identical on every rank
