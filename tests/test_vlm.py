"""The model: visual-token count, splice positions, connectors, weight names."""

import pytest
import torch

from vlalign.config import ModelConfig
from vlalign.models.connectors import AvgPoolConnector, build_connector
from vlalign.models.connectors.patch import AvgPoolOptions
from vlalign.models.vlm import VisionLanguageModel
from vlalign.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_vlm(tiny_models):
    torch.manual_seed(0)
    config = ModelConfig(vision_tower=tiny_models["clip"], llm=tiny_models["llm"], max_length=128)
    return VisionLanguageModel.from_config(config)


def test_visual_token_count_follows_tower_and_connector(tiny_models):
    patch = VisionLanguageModel.from_config(ModelConfig(vision_tower=tiny_models["clip"], llm=tiny_models["llm"]))
    assert patch.vision_tower.grid == (4, 4)
    assert patch.num_visual_tokens == 16  # CLS dropped (LLaVA-1.5 default)
    full = VisionLanguageModel.from_config(ModelConfig(vision_tower=tiny_models["clip"], llm=tiny_models["llm"],
                                                       vision_feature_select="full"))
    assert full.num_visual_tokens == 17
    pooled = VisionLanguageModel.from_config(ModelConfig(vision_tower=tiny_models["clip"], llm=tiny_models["llm"],
                                                         connector="avgpool", connector_options={"pool": 3}))
    assert pooled.num_visual_tokens == 4  # ceil(4/3)^2
    pixel_values = torch.randn(2, 3, 32, 32)
    for model in (patch, full, pooled):
        assert model.encode_images(pixel_values).shape == (2, model.num_visual_tokens, 64)


def test_splice_puts_each_visual_token_at_its_placeholder(tiny_vlm):
    n = tiny_vlm.num_visual_tokens
    image_id = tiny_vlm.image_token_id
    # Row 0: 3 text tokens, image, 2 text tokens. Row 1: text-only. Row 2: 1 text token, image.
    rows = [[5, 6, 7] + [image_id] * n + [8, 9], [10, 11, 12, 13], [14] + [image_id] * n]
    width = max(map(len, rows))
    input_ids = torch.zeros(3, width, dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, :len(row)] = torch.tensor(row)
    pixel_values = torch.randn(2, 3, 32, 32)
    embeds, image_mask, visual = tiny_vlm.embed(input_ids, pixel_values)
    text_embeds = tiny_vlm.language_model.get_input_embeddings()(input_ids)
    assert torch.equal(embeds[0, 3:3 + n], visual[0])
    assert torch.equal(embeds[2, 1:1 + n], visual[1])
    assert torch.equal(embeds[1], text_embeds[1])
    assert torch.equal(embeds[0, :3], text_embeds[0, :3]) and torch.equal(embeds[0, 3 + n:], text_embeds[0, 3 + n:])
    assert image_mask.sum() == 2 * n and image_mask[0, 3:3 + n].all() and not image_mask[1].any()


def test_placeholder_count_mismatch_is_a_clear_error(tiny_vlm):
    n = tiny_vlm.num_visual_tokens
    input_ids = torch.tensor([[5] + [tiny_vlm.image_token_id] * (n - 1)])
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        tiny_vlm.embed(input_ids, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no images"):
        tiny_vlm.embed(input_ids, None)


def test_weight_names_follow_llava(tiny_vlm):
    names = [name for name, _ in tiny_vlm.named_parameters()]
    assert any(n.startswith("vision_tower.") for n in names)
    assert {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.weight"} <= set(names)
    assert "language_model.model.embed_tokens.weight" in names and "language_model.lm_head.weight" in names
    assert set(n.split(".")[0] for n in names) == {"vision_tower", "multi_modal_projector", "language_model"}


def test_forward_output_carries_what_objectives_need(tiny_vlm):
    n = tiny_vlm.num_visual_tokens
    input_ids = torch.tensor([[5] + [tiny_vlm.image_token_id] * n + [6, 7]])
    output = tiny_vlm(input_ids, torch.ones_like(input_ids), torch.randn(1, 3, 32, 32))
    assert output.hidden_states.shape == (1, n + 3, 64)
    assert output.visual_tokens.shape == (1, n, 64)
    assert output.logits.shape == (1, n + 3, tiny_vlm.language_model.config.vocab_size)
    mask = torch.zeros(1, n + 3, dtype=torch.bool)
    mask[0, -2:] = True
    # same rows through a differently shaped matmul: equal up to float32 summation order
    assert torch.allclose(output.logits_at(mask), output.logits[0, -2:], atol=1e-5)


def test_avgpool_averages_windows_and_keeps_partial_edges():
    connector = AvgPoolConnector(1, 1, AvgPoolOptions(pool=2))
    with torch.no_grad():
        connector.linear.weight.fill_(1.0)
        connector.linear.bias.zero_()
    grid = torch.arange(9, dtype=torch.float32).reshape(1, 9, 1)  # 3x3 grid 0..8
    out = connector(grid, (3, 3)).flatten().tolist()
    assert out == pytest.approx([(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8.0])
    assert connector.output_tokens(0, (3, 3)) == 4


def test_unknown_connector_lists_registered():
    with pytest.raises(ConfigError, match="avgpool.*linear.*mlp2x_gelu"):
        build_connector("qformerz", 8, 8)


def test_pooled_mlp_connector_and_intermediate_cnn_stage(tiny_models):
    from vlalign.errors import ModelSourceError
    from vlalign.models.vision import load_vision_tower

    tower = load_vision_tower("efficientnet-lite0", feature_stage=3)
    assert tower.grid == (14, 14) and tower.hidden_size == 80  # stride 16, 80 channels
    final = load_vision_tower("efficientnet-lite0")
    assert final.grid == (7, 7) and final.hidden_size == 1280
    connector = build_connector("mlp2x_gelu", 80, 16, {"pool": 2})
    assert connector.output_tokens(0, tower.grid) == 49
    tokens = tower(torch.randn(1, 3, 224, 224))
    assert tokens.shape == (1, 196, 80) and connector(tokens, tower.grid).shape == (1, 49, 16)
    # Pooling then the MLP equals the MLP applied to 2x2-averaged tokens.
    grid = tokens[0].reshape(14, 14, 80)
    first_window = grid[:2, :2].reshape(4, 80).mean(0)
    expected = connector.linear_2(connector.act(connector.linear_1(first_window)))
    torch.testing.assert_close(connector(tokens, tower.grid)[0, 0], expected)
    with pytest.raises(ModelSourceError, match="vision_feature_layer"):
        VisionLanguageModel.from_config(ModelConfig(vision_tower=tiny_models["clip"], llm=tiny_models["llm"],
                                                    vision_feature_stage=3))


def test_merge_connector_concatenates_each_window_and_pads_edges():
    connector = build_connector("linear", 2, 3, {"merge": 2})
    assert connector.linear.in_features == 8 and connector.output_tokens(1, (3, 3)) == 5
    # one prefix token, then a 3x3 grid whose cell (r, c) carries features (10r + c, -(10r + c))
    cells = torch.tensor([[10.0 * r + c, -(10.0 * r + c)] for r in range(3) for c in range(3)])
    tokens = torch.cat([torch.full((1, 2), 7.0), cells]).unsqueeze(0)
    merged = connector.reduced(tokens, (3, 3))
    assert merged.shape == (1, 5, 8)
    torch.testing.assert_close(merged[0, 0], torch.tensor([7.0, 7.0, 0, 0, 0, 0, 0, 0]))  # prefix, zero-padded
    # window (0, 0) holds cells 00, 01, 10, 11, channel-major: channel 0 of the four, then channel 1
    torch.testing.assert_close(merged[0, 1], torch.tensor([0.0, 1, 10, 11, -0.0, -1, -10, -11]))
    # the bottom-right window holds only cell 22; the three cells past the edge are zeros
    torch.testing.assert_close(merged[0, 4], torch.tensor([22.0, 0, 0, 0, -22, 0, 0, 0]))
    with pytest.raises(ConfigError, match="pool or merge"):
        build_connector("mlp2x_gelu", 2, 3, {"pool": 2, "merge": 2})
    with pytest.raises(ConfigError, match="merge must be an integer >= 1"):
        build_connector("linear", 2, 3, {"merge": 0})


@pytest.mark.parametrize("tied", [False, True])
def test_image_token_rows_are_the_same_at_every_load(tiny_models, tmp_path, tied):
    """`<image>` is added to the vocabulary at load: its embedding / LM-head rows must not depend on the RNG
    (a checkpoint without the LLM re-adds them at every load; two loads or two ranks must answer alike)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from vlalign.models.llm import load_llm

    folder = tiny_models["llm"]
    if tied:  # the same tiny Llama with one matrix for embedding and LM head
        config = AutoConfig.from_pretrained(folder)
        config.tie_word_embeddings = True
        torch.manual_seed(3)
        LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "tied")
        folder = str(tmp_path / "tied")
    original = load_file(f"{folder}/model.safetensors")
    loads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model, tokenizer, image_id = load_llm(folder, "<image>")
        loads.append((model.get_input_embeddings().weight.detach().clone(),
                      model.get_output_embeddings().weight.detach().clone()))
    embed = original["model.embed_tokens.weight"]
    head = embed if tied else original["lm_head.weight"]
    assert image_id == embed.shape[0]  # the token is new: rows were added
    for (got_embed, got_head) in loads:
        assert torch.equal(got_embed[:image_id], embed) and torch.equal(got_head[:image_id], head)
        torch.testing.assert_close(got_embed[image_id], embed.mean(dim=0))
        torch.testing.assert_close(got_head[image_id], head.mean(dim=0))
    assert torch.equal(loads[0][0], loads[1][0]) and torch.equal(loads[0][1], loads[1][1])
