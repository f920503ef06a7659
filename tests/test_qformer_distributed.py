"""ITM under DDP: hard negatives come from the global batch, as LAVIS' BLIP-2 draws them, and a negative image
from another rank carries its gradient back to that rank (two CPU ranks, gloo)."""

from __future__ import annotations

import torch

from process_group_helpers import run_on_two_ranks
from vlalign.distributed import gather_rows_with_grad

SIZES = (3, 2)


def _gather_rank(rank: int, out: str) -> None:
    rows = torch.arange(sum(SIZES), dtype=torch.float32)[:, None] * torch.ones(1, 3)
    lo = sum(SIZES[:rank])
    local = rows[lo:lo + SIZES[rank]].clone().requires_grad_(True)
    gathered, offset = gather_rows_with_grad(local)
    weights = torch.arange(1.0, 1.0 + sum(SIZES))[:, None] * (rank + 1)  # each rank weighs rows its own way
    (gathered * weights).sum().backward()
    torch.save({"gathered": gathered.detach(), "offset": offset, "grad": local.grad}, f"{out}/rank{rank}.pt")


def test_gathered_rows_send_every_ranks_gradient_to_their_owner(tmp_path):
    run_on_two_ranks(_gather_rank, str(tmp_path))
    rows = torch.arange(sum(SIZES), dtype=torch.float32)[:, None] * torch.ones(1, 3)
    # d/d row_i of (loss on rank 0 + loss on rank 1) = i-th weight x (1 + 2)
    expected = torch.arange(1.0, 1.0 + sum(SIZES))[:, None].expand(-1, 3) * 3
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        lo, hi = sum(SIZES[:rank]), sum(SIZES[:rank + 1])
        assert torch.equal(result["gathered"], rows) and result["offset"] == lo
        assert torch.equal(result["grad"], expected[lo:hi])


def _itm_module(config):
    from vlalign.data.build import build_dataset
    from vlalign.data.llava_json import SkipReport
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.objectives import build_objectives, merged_sample_fields
    from vlalign.train.loop import TrainingModule
    from vlalign.train.stages import apply_tune

    torch.manual_seed(0)
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, config.train.stage, config.train.tune)
    module = TrainingModule(model, build_objectives(config.objectives, model)).train()
    return module, build_dataset(config, model, SkipReport(), merged_sample_fields(config.objectives))


def _step(module, items):
    """ITM's gradient for a batch of the given dataset items: {parameter name: grad}, and the logged metrics."""
    from vlalign.data.dataset import Collator

    batch = Collator(module.model.tokenizer.pad_token_id)(items)
    module.zero_grad()
    total, _, metrics = module(batch)
    total.backward()
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}, metrics


def _itm_rank(rank: int, configs: dict, out: str) -> None:
    results = {}
    for mode, config in configs.items():
        module, dataset = _itm_module(config)
        results[mode] = _step(module, [dataset[rank]])  # one record per rank
    torch.save(results, f"{out}/rank{rank}.pt")


def test_itm_negatives_come_from_the_global_batch_with_their_gradient(tiny_config, tiny_query_models, tmp_path):
    """One record per rank: a rank alone has no negative at all; with the global batch each rank's only
    negatives are the other rank's image and caption, so the draw is fixed and the two ranks together must give
    the gradient of one process holding both records (DDP averages: mean over ranks == the single process)."""
    configs = {}
    for mode in ("blip2", "final"):  # one spawn for both: each costs two interpreter starts
        options = (f"{{num_queries: 4, text_encoder: {tiny_query_models['bert']}, max_text_length: 24, "
                   f"dropout: 0.0}}")
        configs[mode] = tiny_config(1, "model.connector=qformer", f"model.connector_options={options}",
                                    f"objectives={{qformer: {{itm_itg_queries: {mode}, itc_weight: 0.0, "
                                    f"itg_weight: 0.0}}}}")
    run_on_two_ranks(_itm_rank, configs, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for mode, config in configs.items():
        module, dataset = _itm_module(config)
        expected, metrics = _step(module, [dataset[0], dataset[1]])
        assert metrics["itm_rows"] == 2 and metrics["itm_remote_negatives"] == 0.0  # two different captions
        for grads, rank_metrics in (ranks[0][mode], ranks[1][mode]):
            assert rank_metrics["itm_rows"] == 1 and rank_metrics["itm_remote_negatives"] == 1.0
        assert set(ranks[0][mode][0]) == set(expected)
        # the image side of a negative pair: the normalised features (blip2) or the whole query pass (final)
        reaches = "vision_norm.weight" if mode == "blip2" else "former.query_tokens"
        assert any(reaches in name and grad.abs().sum() > 0 for name, grad in expected.items())
        for name, grad in expected.items():
            mean = (ranks[0][mode][0][name] + ranks[1][mode][0][name]) / 2
            torch.testing.assert_close(mean, grad, rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")
