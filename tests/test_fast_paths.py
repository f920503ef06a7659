"""The exact speed-ups of a training step: LoRA's dropout by rand_like, frozen linear weights in bf16."""

from __future__ import annotations

import torch
from torch import nn

from vlalign.train.fast_paths import RandDropout, store_frozen_linears_in, use_rand_dropout


def test_rand_dropout_keeps_each_element_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.full((1000, 1000), 2.0)
    dropout = RandDropout(0.05).train()
    out = dropout(x)
    kept = out != 0
    # 1e6 draws: the kept share is within 5 standard deviations (0.00022) of 0.95
    assert abs(kept.float().mean().item() - 0.95) < 0.0011
    assert torch.all(out[kept] == 2.0 / 0.95)
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(RandDropout(0.0).train()(x), x) and torch.all(RandDropout(1.0).train()(x) == 0)


def test_lora_dropout_modules_are_replaced(tiny_config):
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.train.stages import apply_tune

    config = tiny_config(2, "train.tune.llm=lora", "train.tune.lora.dropout=0.2")
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 2, config.train.tune)
    dropouts = [m for m in model.language_model.modules() if isinstance(m, nn.Dropout) and m.p == 0.2]
    assert dropouts and all(type(m) is RandDropout for m in dropouts)
    assert use_rand_dropout(model.language_model) == 0  # idempotent


def test_frozen_linears_in_bf16_give_identical_outputs_under_autocast(tiny_config):
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.train.stages import apply_tune

    config = tiny_config(2, "train.tune.llm=lora", "train.tune.lora.r=4", "train.tune.lora.dropout=0.0")
    torch.manual_seed(0)
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 2, config.train.tune)
    model.eval()
    ids = torch.randint(5, 300, (2, 8 + model.num_visual_tokens))
    pixels = torch.randn(2, 3, 32, 32)
    ids[:, 1:1 + model.num_visual_tokens] = model.image_token_id
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(ids, torch.ones_like(ids), pixels).hidden_states
    cast = store_frozen_linears_in(model, torch.bfloat16)
    assert cast > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(ids, torch.ones_like(ids), pixels).hidden_states
    assert torch.equal(before, after)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert model.language_model.get_input_embeddings().weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.multi_modal_projector.parameters())


def test_a_tied_head_keeps_float32(tiny_models):
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, tie_word_embeddings=True)).requires_grad_(False)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.language_model, self.vision_tower = llm, nn.Identity()

    store_frozen_linears_in(Holder(), torch.bfloat16)
    assert llm.lm_head.weight.dtype == torch.float32 and llm.lm_head.weight is llm.model.embed_tokens.weight
    assert llm.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
