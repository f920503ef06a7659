"""Negatives across processes: two CPU ranks (gloo) see the global batch, and each rank's gradient for its
own rows equals the single-process gradient of the same rows."""

from __future__ import annotations

import torch

from process_group_helpers import run_on_two_ranks
from vlalign.distributed import gather_objects, gather_rows
from vlalign.losses.functional import cg_contrastive
from vlalign.objectives.pair_loss import PairLoss

SIZES = (3, 2)  # ranks hold different numbers of rows (last batch, deduplicated labels)


def _data():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(sum(SIZES), 8, generator=generator)
    b = torch.randn(sum(SIZES), 8, generator=generator)
    return a, b


def _rank_main(rank: int, out: str) -> None:
    a, b = _data()
    lo = sum(SIZES[:rank])
    local_a = a[lo:lo + SIZES[rank]].clone().requires_grad_(True)
    local_b = b[lo:lo + SIZES[rank]].clone().requires_grad_(True)
    torch.manual_seed(0)
    loss, logged = PairLoss("infonce", temperature=0.1)(local_a, local_b)
    loss.backward()
    gathered, offset = gather_rows(local_a.detach())
    labels = gather_objects([f"r{rank}-{i}" for i in range(SIZES[rank])])
    # cg_contrastive with captions of different lengths per rank, padded to the global width
    width = max(gather_objects([rank + 2]))
    text = torch.zeros(SIZES[rank], width, 8)
    text[:, :rank + 2] = local_b.detach().unsqueeze(1)
    mask = torch.zeros(SIZES[rank], width, dtype=torch.bool)
    mask[:, :rank + 2] = True
    pooled = local_a.detach().clone().requires_grad_(True)
    cg = cg_contrastive(gather_rows(pooled.unsqueeze(1))[0], gather_rows(text)[0], gather_rows(mask)[0], 10.0)
    cg.backward()
    torch.save({"loss": loss.detach(), "grad_a": local_a.grad, "grad_b": local_b.grad, "pairs": logged["pairs"],
                "gathered": gathered, "offset": offset, "labels": labels, "cg": cg.detach(),
                "cg_grad": pooled.grad}, f"{out}/rank{rank}.pt")


def test_two_ranks_contrast_against_the_global_batch(tmp_path):
    run_on_two_ranks(_rank_main, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    a, b = _data()
    full_a, full_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    torch.manual_seed(0)
    expected, _ = PairLoss("infonce", temperature=0.1)(full_a, full_b)
    expected.backward()
    cg_a = a.clone().requires_grad_(True)
    widths = [2] * SIZES[0] + [3] * SIZES[1]
    text = torch.zeros(len(a), 3, 8)
    mask = torch.zeros(len(a), 3, dtype=torch.bool)
    for i, w in enumerate(widths):
        text[i, :w], mask[i, :w] = b[i], True
    cg_expected = cg_contrastive(cg_a.unsqueeze(1), text, mask, 10.0)
    cg_expected.backward()

    for rank, result in enumerate(results):
        lo, hi = sum(SIZES[:rank]), sum(SIZES[:rank + 1])
        assert result["pairs"] == len(a)  # negatives = the global batch
        assert torch.equal(result["gathered"], a) and result["offset"] == lo
        assert result["labels"] == [f"r{r}-{i}" for r in (0, 1) for i in range(SIZES[r])]
        assert torch.allclose(result["loss"], expected.detach(), atol=1e-6)
        assert torch.allclose(result["grad_a"], full_a.grad[lo:hi], atol=1e-6)
        assert torch.allclose(result["grad_b"], full_b.grad[lo:hi], atol=1e-6)
        assert torch.allclose(result["cg"], cg_expected.detach(), atol=1e-6)
        assert torch.allclose(result["cg_grad"], cg_a.grad[lo:hi], atol=1e-6)
