"""Q-Former / X-Former: masks, hard negatives, reconstruction loss, frozen MAE, stage-2 shapes, bad configs."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.errors import ConfigError
from vlalign.models.query_former import qformer_attention_mask
from vlalign.losses.functional import masked_patch_mse, sample_hard_negatives
from vlalign.models.vlm import ForwardRequest


def _query_config(tiny_config, tiny_query_models, stage=1, connector="qformer", objectives="{qformer: {}}",
                  *extra):
    options = f"{{num_queries: 4, text_encoder: {tiny_query_models['bert']}, max_text_length: 24"
    if connector == "xformer":
        options += f", mae: {tiny_query_models['mae']}"
    return tiny_config(stage, f"model.connector={connector}", f"model.connector_options={options}}}",
                       f"objectives={objectives}", *extra)


def _model_and_batch(config):
    from vlalign.data.build import build_dataset
    from vlalign.data.dataset import Collator
    from vlalign.data.llava_json import SkipReport
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.objectives import build_objectives
    from vlalign.objectives import merged_sample_fields
    from vlalign.train.loop import TrainingModule
    from vlalign.train.stages import apply_tune

    torch.manual_seed(0)
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, config.train.stage, config.train.tune)
    objectives = build_objectives(config.objectives, model)
    dataset = build_dataset(config, model, SkipReport(), merged_sample_fields(config.objectives))
    batch = Collator(model.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    return TrainingModule(model, objectives), dataset, batch


# --- masks ----------------------------------------------------------------------------------------------------

def test_masks_follow_blip2():
    queries, text_mask = 3, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    q, t = slice(0, queries), slice(queries, queries + 4)
    uni = qformer_attention_mask(queries, text_mask, "unimodal")
    assert not uni[:, q, t].any() and not uni[:, t, q].any()  # queries and text never see each other (ITC)
    assert uni[:, q, q].all()
    bi = qformer_attention_mask(queries, text_mask, "bidirectional")
    assert bi[0].all() and not bi[1, :, queries + 2].any() == False  # noqa: E712  own padding row sees itself
    assert not bi[1, :queries, queries + 2:].any()  # nobody attends to padding
    causal = qformer_attention_mask(queries, text_mask, "multimodal_causal")
    assert not causal[:, q, t].any()  # queries never see text (ITG)
    assert causal[0, t, q].all()  # text sees every query
    text_part = causal[0, t, t]
    assert torch.equal(text_part, torch.tril(torch.ones(4, 4, dtype=torch.bool)))  # never later text
    with pytest.raises(ValueError, match="unknown Q-Former mask mode"):
        qformer_attention_mask(queries, text_mask, "causal")


def test_itg_text_never_sees_later_text_and_itc_text_never_sees_queries(tiny_query_models):
    from vlalign.models.query_former import build_query_former

    torch.manual_seed(0)
    former, tokenizer = build_query_former(tiny_query_models["bert"], 4, 16)
    former.eval()
    queries = former.encode_queries(torch.randn(2, 9, 16))
    ids = tokenizer(["a red circle on the left", "a blue square"], padding=True, return_tensors="pt")
    changed = ids.input_ids.clone()
    changed[0, 4:] = tokenizer.convert_tokens_to_ids("blue")  # later tokens differ
    a = former.joint(queries, ids.input_ids, ids.attention_mask, "multimodal_causal")
    b = former.joint(queries, changed, ids.attention_mask, "multimodal_causal")
    assert torch.allclose(a[0, 4:4 + 4], b[0, 4:4 + 4], atol=1e-6)  # positions 0-3 of the text unchanged
    assert not torch.allclose(a[0, 4 + 4:], b[0, 4 + 4:])
    # unimodal: the text states do not depend on the queries at all
    uni_a = former.joint(queries, ids.input_ids, ids.attention_mask, "unimodal")[:, 4:]
    uni_b = former.joint(queries * 5 + 1, ids.input_ids, ids.attention_mask, "unimodal")[:, 4:]
    text_only = former.encode_text(ids.input_ids, ids.attention_mask)
    mask = ids.attention_mask.bool()
    assert torch.allclose(uni_a[mask], uni_b[mask], atol=1e-6) and torch.allclose(uni_a[mask], text_only[mask], atol=1e-5)


def test_text_branch_starts_as_the_pretrained_bert(tiny_query_models):
    from transformers import AutoModel, AutoTokenizer

    from vlalign.models.query_former import build_query_former

    former, _ = build_query_former(tiny_query_models["bert"], 4, 16)
    bert = AutoModel.from_pretrained(tiny_query_models["bert"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_query_models["bert"])
    ids = tokenizer(["two green triangles", "a red circle on the left"], padding=True, return_tensors="pt")
    ours = former.eval().encode_text(ids.input_ids, ids.attention_mask)
    mask = ids.attention_mask.bool()
    assert torch.allclose(ours[mask], bert(**ids).last_hidden_state[mask], atol=1e-5)
    # the query FFN starts as a copy of the text FFN; cross-attention is new
    layer = former.layer[0]
    assert torch.equal(layer.query_ffn.intermediate[0].weight, layer.text_ffn.intermediate[0].weight)
    assert layer.crossattention is not None and former.layer[1].crossattention is None  # every other layer


# --- pure functions -------------------------------------------------------------------------------------------

def test_itg_head_starts_from_the_pretrained_mlm_head_when_the_checkpoint_has_one(tiny_query_models, tmp_path):
    """BLIP-2 initialises ITG's prediction transform and bias from BERT's `cls.predictions.*`; an encoder-only
    checkpoint (no head) keeps a fresh head."""
    from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM

    from vlalign.models.query_former import build_query_former

    torch.manual_seed(3)
    mlm = BertForMaskedLM(AutoConfig.from_pretrained(tiny_query_models["bert"]))
    with torch.no_grad():
        mlm.cls.predictions.bias.normal_()  # BERT's init is zeros: make the copy visible
    mlm.save_pretrained(tmp_path / "bert_mlm")
    AutoTokenizer.from_pretrained(tiny_query_models["bert"]).save_pretrained(tmp_path / "bert_mlm")
    former, tokenizer = build_query_former(str(tmp_path / "bert_mlm"), 4, 16)
    head = mlm.cls.predictions
    assert torch.equal(former.lm_transform[0].weight, head.transform.dense.weight)
    assert torch.equal(former.lm_transform[0].bias, head.transform.dense.bias)
    assert torch.equal(former.lm_transform[2].weight, head.transform.LayerNorm.weight)
    vocab = head.bias.numel()
    assert torch.equal(former.lm_bias[:vocab], head.bias)  # and [DEC], added after the vocabulary, starts at 0
    assert former.lm_bias.numel() == len(tokenizer) and torch.all(former.lm_bias[vocab:] == 0)
    # the same encoder saved without its head: the ITG transform is a fresh one, not the MLM head's
    mlm.bert.save_pretrained(tmp_path / "bert_only")
    AutoTokenizer.from_pretrained(tiny_query_models["bert"]).save_pretrained(tmp_path / "bert_only")
    fresh, _ = build_query_former(str(tmp_path / "bert_only"), 4, 16)
    assert not torch.equal(fresh.lm_transform[0].weight, head.transform.dense.weight)
    assert torch.all(fresh.lm_bias == 0)


def test_hard_negatives_never_pick_a_positive_and_prefer_similar():
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(6, 6)
    same = torch.eye(6, dtype=torch.bool)
    same[0, 3] = same[3, 0] = True  # identical captions count as positives
    for _ in range(300):
        picks = sample_hard_negatives(similarity, same, generator)
        assert not same[torch.arange(6), picks].any()
    # a much more similar negative is drawn far more often than a dissimilar one
    similarity = torch.tensor([[5.0, 4.0, -4.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    picks = torch.stack([sample_hard_negatives(similarity, torch.eye(3, dtype=torch.bool), generator)
                         for _ in range(400)])
    assert (picks[:, 0] == 1).float().mean() > 0.95
    with pytest.raises(ValueError, match=r"rows \[1\] have no negative"):
        sample_hard_negatives(torch.zeros(2, 2), torch.tensor([[True, False], [True, True]]))


def test_itm_hard_negatives_are_drawn_from_softmax_of_scaled_similarity():
    """BLIP-2 draws from softmax(sim / temp); with the logit scale 1/0.07 a cosine lead of 0.1 is a factor
    e^(0.1/0.07) = 4.17 in probability, where softmax(raw cosine) gives e^0.1 = 1.105 (near uniform)."""
    from vlalign.losses.functional import hard_negative_weights
    from vlalign.objectives.qformer import itm_pairs

    similarity = torch.tensor([[0.9, 0.5, 0.4], [0.5, 0.9, 0.3], [0.4, 0.3, 0.9]])
    same = torch.eye(3, dtype=torch.bool)
    scale = 1 / 0.07
    weights = hard_negative_weights(similarity * scale, same)
    # row 0: negatives 1 (0.5) and 2 (0.4): p1 = e^(0.5/0.07) / (e^(0.5/0.07) + e^(0.4/0.07)) = 1 / (1 + e^(-0.1/0.07))
    expected = 1 / (1 + math.exp(-0.1 / 0.07))  # = 0.8067
    assert weights[0, 0] == 0 and weights[0, 1].item() == pytest.approx(expected, abs=1e-6)
    assert weights[0, 2].item() == pytest.approx(1 - expected, abs=1e-6)
    # the ITM pairs the objective uses draw with those probabilities (empirical frequency over 4000 draws)
    torch.manual_seed(0)
    captions = ["a", "b", "c"]
    draws = torch.stack([itm_pairs(similarity, similarity.T, captions, captions, torch.tensor(scale))[1] for _ in range(4000)])
    assert (draws[:, 0] == 1).float().mean().item() == pytest.approx(expected, abs=0.02)
    unscaled = torch.stack([itm_pairs(similarity, similarity.T, captions, captions, 1.0)[1] for _ in range(4000)])
    assert (unscaled[:, 0] == 1).float().mean().item() == pytest.approx(1 / (1 + math.exp(-0.1)), abs=0.02)  # 0.525


def test_reconstruction_loss_only_on_masked_patches():
    torch.manual_seed(0)
    target = torch.randn(2, 4, 6)
    predicted = torch.randn(2, 4, 6)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    expected = sum(((predicted[b, n] - target[b, n]) ** 2).mean() for b, n in [(0, 0), (0, 2), (1, 3)]) / 3
    assert masked_patch_mse(predicted, target, mask, normalize_target=False).item() == pytest.approx(expected.item())
    edited = predicted.clone()
    edited[0, 1] += 100.0  # an unmasked (visible) patch: no effect
    assert masked_patch_mse(edited, target, mask).item() == pytest.approx(masked_patch_mse(predicted, target, mask).item())
    edited[0, 0] += 1.0  # a masked patch: changes the loss
    assert masked_patch_mse(edited, target, mask).item() != pytest.approx(masked_patch_mse(predicted, target, mask).item())
    with pytest.raises(ValueError, match="no patch is masked"):
        masked_patch_mse(predicted, target, torch.zeros(2, 4))


# --- the connectors in the model ------------------------------------------------------------------------------

def test_qformer_stage1_terms_without_an_llm_pass(tiny_config, tiny_query_models):
    config = _query_config(tiny_config, tiny_query_models)
    module, dataset, batch = _model_and_batch(config)
    calls = []
    module.model.language_model.get_decoder().register_forward_hook(lambda *args: calls.append(1))
    for objective in module.objectives.values():
        objective.prepare(module.model, dataset, accelerator=None)
    module.train()
    total, losses, metrics = module(batch)
    assert set(losses) == {"itc", "itm", "itg"} and not calls  # no LLM forward for Q-Former pre-training
    assert total.item() == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-5)
    total.backward()
    connector = module.model.multi_modal_projector
    assert connector.former.query_tokens.grad is not None and connector.itm_head.weight.grad is not None
    assert connector.former.layer[0].crossattention.self.key.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.model.language_model.parameters())
    assert 0.0 <= metrics["itm_accuracy"] <= 1.0


def test_xformer_reconstructs_and_its_mae_stays_frozen(tiny_config, tiny_query_models):
    from vlalign.train.stages import parameter_table

    config = _query_config(tiny_config, tiny_query_models, 1, "xformer", "{xformer: {}}")
    module, dataset, batch = _model_and_batch(config)
    connector = module.model.multi_modal_projector
    mae = connector.mae_branch.mae
    assert not any(p.requires_grad for p in mae.parameters())  # connector "full" does not unfreeze the MAE
    for objective in module.objectives.values():
        objective.prepare(module.model, dataset, accelerator=None)
    module.train()
    assert not mae.training  # frozen parts stay in eval mode
    total, losses, metrics = module(batch)
    assert set(losses) == {"itc", "itm", "itg", "reconstruction"}
    assert metrics["mae_masked_fraction"] == pytest.approx(0.5)
    total.backward()
    assert all(p.grad is None for p in mae.parameters())
    assert connector.mae_branch.enrich.attention.self.query.weight.grad.abs().sum() > 0  # recon reaches CA 1
    assert connector.mae_branch.enhance.attention.self.query.weight.grad.abs().sum() > 0
    rows = {name: (trainable, frozen) for name, trainable, frozen in parameter_table(module.model)}
    assert rows["multi_modal_projector"][1] == sum(p.numel() for p in mae.parameters())
    # outside training the MAE sees the whole image and nothing is reconstructed
    module.eval()
    with torch.no_grad():
        output = module.model(batch.input_ids, batch.attention_mask, batch.pixel_values,
                              request=ForwardRequest(run_llm=False))
    assert set(output.connector_aux) == {"final_queries"}  # nobody asked for the reconstruction


def test_stage2_queries_go_through_one_fc_into_the_llm(tiny_config, tiny_query_models):
    config = _query_config(tiny_config, tiny_query_models, 1, "xformer", "{generative: {}}")
    module, dataset, batch = _model_and_batch(config)
    model = module.model
    assert model.num_visual_tokens == 4  # the queries, whatever the tower's grid
    assert int((batch.input_ids == model.image_token_id).sum(dim=1)[0]) == 4
    module.train()
    output = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
    assert output.visual_tokens.shape == (4, 4, model.hidden_size)
    assert "reconstruction_predicted" not in output.connector_aux  # LM loss only in LLM alignment
    total, losses, _ = module(batch)
    total.backward()
    connector = model.multi_modal_projector
    assert connector.language_projection.weight.grad is not None
    assert connector.former.query_tokens.grad is not None  # the X-Former trains too (the paper's setting)
    # the ablation switch: only the FC layer trains
    frozen = _query_config(tiny_config, tiny_query_models, 1, "xformer", "{generative: {}}")
    frozen.model.connector_options["freeze_former"] = True
    module, _, _ = _model_and_batch(frozen)
    trainable = {n.split(".")[1] for n, p in module.model.multi_modal_projector.named_parameters(prefix="c")
                 if p.requires_grad}
    assert trainable == {"language_projection"}


def test_pipeline_pretrain_align_instruct(tiny_config, tiny_query_models, tmp_path):
    """Stage 1 X-Former pre-training -> LLM alignment -> LoRA instruction tuning, through checkpoints."""
    import json

    from vlalign.train.loop import train

    pretrain = _query_config(tiny_config, tiny_query_models, 1, "xformer", "{xformer: {}}", "train.max_steps=2",
                             f"train.output_dir={tmp_path / 'pretrain'}")
    first = train(pretrain)
    logged = [json.loads(line) for line in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert {"itc", "itm", "itg", "reconstruction"} <= set(logged[-1])
    align = _query_config(tiny_config, tiny_query_models, 1, "xformer", "{generative: {}}", "train.max_steps=2",
                          f"train.init_from={first}", f"train.output_dir={tmp_path / 'align'}")
    second = train(align)
    instruct = _query_config(tiny_config, tiny_query_models, 2, "xformer", "{generative: {}}", "train.max_steps=2",
                             f"train.init_from={second}", "train.tune.llm=lora", "train.tune.lora.r=4",
                             f"train.output_dir={tmp_path / 'instruct'}")
    final = train(instruct)
    from safetensors.torch import load_file
    saved = load_file(str(final / "model.safetensors"))
    assert any(name.startswith("multi_modal_projector.language_projection") for name in saved)
    assert not any(".mae_branch.mae." in name for name in saved)  # the frozen MAE reloads from its source


# --- bad configs ----------------------------------------------------------------------------------------------

def test_bad_query_configs_fail_clearly(tiny_config, tiny_query_models):
    from vlalign.models.query_former import build_query_former
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.train.checks import check_config

    with pytest.raises(ConfigError, match="num_queries must be an integer >= 1, got 0"):
        build_query_former(tiny_query_models["bert"], 0, 16)
    config = tiny_config(1, "model.connector=xformer",
                         f"model.connector_options={{text_encoder: {tiny_query_models['bert']}}}")
    with pytest.raises(ConfigError, match="xformer needs model.connector_options.mae"):
        VisionLanguageModel.from_config(config.model)
    config = tiny_config(1, "model.connector=xformer", f"model.connector_options={{text_encoder: "
                         f"{tiny_query_models['bert']}, mae: {tiny_query_models['mae']}, mask_ratio: 1.5}}")
    with pytest.raises(ConfigError, match="mask_ratio must be in \\(0, 1\\), got 1.5"):
        VisionLanguageModel.from_config(config.model)
    former, _ = build_query_former(tiny_query_models["bert"], 4, 16)
    with pytest.raises(ValueError, match="vision features have 24 channels.*built for 16"):
        former.encode_queries(torch.randn(1, 5, 24))
    with pytest.raises(ConfigError, match="not a BERT-family|needs a BERT-family"):
        build_query_former(tiny_query_models["mae"], 4, 16)
    # objective and connector that do not fit: an error from the config alone, before any weights load
    with pytest.raises(ConfigError, match="set model.connector: qformer or xformer, not 'mlp2x_gelu'"):
        check_config(tiny_config(1, "objectives={qformer: {}}"))
    with pytest.raises(ConfigError, match="set model.connector: xformer, not 'qformer'"):
        check_config(_query_config(tiny_config, tiny_query_models, 1, "qformer", "{xformer: {}}"))
    with pytest.raises(ConfigError, match="'qformer' and 'xformer' both return a loss term named 'itc'"):
        check_config(_query_config(tiny_config, tiny_query_models, 1, "xformer", "{qformer: {}, xformer: {}}"))


def test_shipped_xformer_presets_parse():
    from pathlib import Path

    from vlalign.config import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    pretrain = load_config(configs / "xformer-pretrain.yaml")
    align = load_config(configs / "xformer-align.yaml")
    assert pretrain.model.connector == align.model.connector == "xformer"
    assert pretrain.model.connector_options == align.model.connector_options  # same module in both stages
    assert set(pretrain.objectives) == {"xformer"} and set(align.objectives) == {"generative"}
    assert align.train.init_from == f"{pretrain.train.output_dir}/final"


def test_retrieval_from_similarity_and_from_a_query_model(tiny_config, tiny_query_models, toy_data):
    from vlalign.losses.retrieval import recall_from_similarity
    from vlalign.eval.alignment_run import read_pairs
    from vlalign.eval.query_retrieval import query_retrieval
    from vlalign.models.vlm import VisionLanguageModel

    assert recall_from_similarity(torch.eye(4), (1,)) == {"i2t@1": 1.0, "t2i@1": 1.0}
    shifted = torch.eye(4).roll(1, dims=1) + 0.5 * torch.eye(4)  # own text second-best for every image
    assert recall_from_similarity(shifted, (1, 2)) == {"i2t@1": 0.0, "t2i@1": 0.0, "i2t@2": 1.0, "t2i@2": 1.0}
    model = VisionLanguageModel.from_config(_query_config(tiny_config, tiny_query_models).model).eval()
    pairs, root = read_pairs(toy_data["stage1"], toy_data["image_root"], 8)
    result = query_retrieval(model, pairs, root, batch_size=3)
    assert result["pairs"] == 8 and all(0.0 <= result[k] <= 1.0 for k in ("TR@1", "TR@5", "IR@1", "IR@5"))
    assert result["TR@1"] <= result["TR@5"] and result["IR@1"] <= result["IR@5"]
    patch_model = VisionLanguageModel.from_config(tiny_config(1).model)
    with pytest.raises(ConfigError, match="needs a qformer / xformer connector"):
        query_retrieval(patch_model, pairs, root)


def test_the_three_terms_can_learn_a_fixed_batch(tiny_config, tiny_query_models):
    """Optimising one batch drives ITC, ITM and ITG down: the terms are wired to trainable parameters."""
    config = _query_config(tiny_config, tiny_query_models)
    config.model.connector_options["dropout"] = 0.0
    module, dataset, batch = _model_and_batch(config)
    for objective in module.objectives.values():
        objective.prepare(module.model, dataset, accelerator=None)
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(80):
        total, losses, _ = module(batch)
        first = first or {k: v.item() for k, v in losses.items()}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    with torch.no_grad():
        _, last, _ = module(batch)
    for term in ("itc", "itm", "itg"):
        assert last[term].item() < 0.6 * first[term], (term, first[term], last[term].item())


def test_query_objective_input_errors_name_the_problem(tiny_config, tiny_query_models, toy_data):
    from vlalign.eval.alignment_run import read_pairs
    from vlalign.eval.query_retrieval import query_retrieval

    from vlalign.train.checks import check_config

    # stage-2 chat data: the pre-training terms need image-caption pairs (checked before any weights load)
    with pytest.raises(ConfigError, match="needs data.format: plain, got 'chat'"):
        check_config(_query_config(tiny_config, tiny_query_models, 2))
    # a frozen former has nothing to learn from these terms
    frozen = _query_config(tiny_config, tiny_query_models)
    frozen.model.connector_options["freeze_former"] = True
    module, dataset, batch = _model_and_batch(frozen)
    with pytest.raises(ConfigError, match="the Q-Former is frozen"):
        module.objectives["qformer"].prepare(module.model, dataset, accelerator=None)
    # a record without an image is named
    module, dataset, batch = _model_and_batch(_query_config(tiny_config, tiny_query_models))
    module.objectives["qformer"].prepare(module.model, dataset, accelerator=None)
    batch.pixel_values, batch.has_image = batch.pixel_values[:3], torch.tensor([True, True, True, False])
    with pytest.raises(ValueError, match=f"records without one: \\['{batch.record_ids[3]}'\\]"):
        module(batch)
    # retrieval with fewer pairs than K
    pairs, root = read_pairs(toy_data["stage1"], toy_data["image_root"], 3)
    with pytest.raises(ConfigError, match="3 pairs are fewer than K = 5"):
        query_retrieval(module.model.eval(), pairs, root)


# --- which queries ITM and ITG see: the X-Former's final queries, or BLIP-2's own passes -----------------------

def test_itm_itg_queries_default_follows_the_connectors_paper(tiny_config, tiny_query_models):
    """auto: BLIP-2's passes on the qformer connector; the final (MAE-fused) queries on the xformer (X-Former 2.3)."""
    qformer, _, _ = _model_and_batch(_query_config(tiny_config, tiny_query_models))
    xformer, _, _ = _model_and_batch(_query_config(tiny_config, tiny_query_models, 1, "xformer", "{xformer: {}}"))
    chosen, _, _ = _model_and_batch(_query_config(tiny_config, tiny_query_models, 1, "xformer",
                                                  "{xformer: {itm_itg_queries: blip2}}"))
    assert qformer.objectives["qformer"].mode == "blip2" and xformer.objectives["xformer"].mode == "final"
    assert qformer.request.connector_aux == {"query_pass"}
    assert xformer.request.connector_aux == {"reconstruction"}
    assert chosen.objectives["xformer"].mode == "blip2"
    assert chosen.request.connector_aux == {"reconstruction", "query_pass"}
    from vlalign.objectives.base import objective_options

    with pytest.raises(ConfigError, match="objectives.qformer: itm_itg_queries: Input should be 'auto', 'final'"):
        objective_options("qformer", {"itm_itg_queries": "last"})


def test_itg_over_cached_query_states_equals_rerunning_the_queries(tiny_config, tiny_query_models):
    """LAVIS' ITG reuses the query pass's keys/values; re-running the learnable queries with cross-attention under
    the multimodal causal mask must give the same text states (and the same query states as the query pass)."""
    module, _, batch = _model_and_batch(_query_config(tiny_config, tiny_query_models))
    connector = module.model.multi_modal_projector.eval()
    former = connector.former
    torch.manual_seed(1)
    features = connector.vision_norm(torch.randn(3, 17, former.vision_dim))
    ids, mask, _ = connector.tokenize(["a red circle", "there is one blue square on the left", "fruit"], "cpu")
    with torch.no_grad():
        queries, layer_inputs = former.encode_queries(features, keep_layer_inputs=True)
        cached = former.decode_text(layer_inputs, ids, mask)
        rerun = former.joint(former.initial_queries(3), ids, mask, "multimodal_causal", image_features=features)
    assert layer_inputs.shape == (len(former.layer), 3, former.num_queries, former.hidden_size)
    torch.testing.assert_close(rerun[:, :former.num_queries], queries, rtol=0, atol=1e-5)
    real = mask.bool()  # padded text positions are never read
    torch.testing.assert_close(cached[real], rerun[:, former.num_queries:][real], rtol=0, atol=1e-5)
    assert torch.equal(former.encode_queries(features), queries)


def _itm_head_outputs(module, batch) -> tuple[torch.Tensor, dict]:
    """The ITM head's per-query logits for every pair of the objective's ITM pass (positives first), and the
    connector's outputs of the same forward pass."""
    seen = []
    handle = module.model.multi_modal_projector.itm_head.register_forward_hook(lambda m, i, out: seen.append(out))
    aux = {}
    original = module.model.multi_modal_projector.encode

    def encode(*args, **kwargs):
        result = original(*args, **kwargs)
        aux.update(result.aux)
        return result

    module.model.multi_modal_projector.encode = encode
    try:
        total, losses, metrics = module(batch)
    finally:
        handle.remove()
        del module.model.multi_modal_projector.encode
    return seen[0].mean(dim=1), {"aux": aux, "total": total, "metrics": metrics}


@pytest.mark.parametrize("mode", ["blip2", "final"])
def test_itm_pass_pairs_the_caption_with_the_modes_queries(tiny_config, tiny_query_models, mode):
    """blip2: BLIP-2's ITM pass, the learnable queries re-run with cross-attention to the pair's image features;
    final: the final queries fill the query slots of a pass without cross-attention. Checked on the positives
    (the first rows of the pass) against each definition, with the weights and features of the same step."""
    config = _query_config(tiny_config, tiny_query_models, 1, "qformer",
                           f"{{qformer: {{itm_itg_queries: {mode}, itc_weight: 0.0, itg_weight: 0.0}}}}")
    config.model.connector_options["dropout"] = 0.0
    module, dataset, batch = _model_and_batch(config)
    module.train()
    logits, seen = _itm_head_outputs(module, batch)
    connector = module.model.multi_modal_projector
    former = connector.former
    ids, mask, _ = connector.tokenize(batch.extras["caption"], "cpu")
    with torch.no_grad():
        if mode == "blip2":
            states = former.joint(former.initial_queries(len(ids)), ids, mask, "bidirectional",
                                  image_features=seen["aux"]["vision_features"])
        else:
            assert "vision_features" not in seen["aux"]  # nothing extra computed in this mode
            states = former.joint(seen["aux"]["final_queries"], ids, mask, "bidirectional")
        expected = connector.itm_head(states[:, :former.num_queries]).mean(dim=1)
    torch.testing.assert_close(logits[:len(ids)].detach(), expected, rtol=0, atol=1e-5)
    assert len(logits) == len(ids) + 2 * seen["metrics"]["itm_rows"]  # + a negative text and image per row
    assert seen["metrics"]["itm_remote_negatives"] == 0.0  # one process: every negative is local
    # ITM alone (the other weights are 0) reaches the learnable queries and the cross-attention
    seen["total"].backward()
    assert former.query_tokens.grad.abs().sum() > 0
    assert former.layer[0].crossattention.self.key.weight.grad.abs().sum() > 0
