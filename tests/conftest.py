"""Shared fixtures: a tokenizer built here, tiny random Llama and CLIP-vision models saved as HF folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach for the hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")

CORPUS = [
    "There is a red circle on the left and a blue square on the right.",
    "What color is the triangle? The triangle is green. How many shapes are in the picture?",
    "There are 2 shapes. There is one shape. Name a fruit that can be yellow. An apple can be red.",
    "A purple fruit is rare; plums can look orange. Describe the image briefly.",
    "user assistant system You are a helpful assistant.",
] * 20


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", bos_token="<|im_start|>")
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Folders: 'llm' (tiny Llama + tokenizer), 'clip' (tiny CLIP vision, 32 px, 8 px patches = 4x4 grid)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=512, tie_word_embeddings=False,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                       bos_token_id=tokenizer.bos_token_id))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    clip = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4))
    clip.save_pretrained(root / "clip")
    return {"llm": str(root / "llm"), "clip": str(root / "clip")}


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    from vlalign.data.toy import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n_images=12, seed=0, size=64)


@pytest.fixture
def tiny_config(tiny_models, toy_data, tmp_path):
    """Factory: a RunConfig on the tiny models and the toy data; extra `--set` style overrides allowed."""
    from vlalign.config import load_config

    def make(stage: int = 1, *overrides: str):
        fmt = "plain" if stage == 1 else "chat"
        base = [f"model.vision_tower={tiny_models['clip']}", f"model.llm={tiny_models['llm']}",
                "model.max_length=128", f"data.train_file={toy_data[f'stage{stage}']}",
                f"data.image_root={toy_data['image_root']}", f"data.format={fmt}", f"train.stage={stage}",
                f"train.output_dir={tmp_path / f'stage{stage}'}", "train.batch_size=4", "train.log_every=1",
                "train.lr=1e-3"]
        return load_config(None, [*base, *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_query_models(tmp_path_factory) -> dict[str, str]:
    """Folders: 'bert' (tiny random BERT + WordPiece tokenizer, the Q-Former's text side), 'mae' (tiny random
    ViTMAEForPreTraining: 32 px, 8 px patches, encoder 32 wide, decoder 16 wide)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast, ViTMAEConfig, ViTMAEForPreTraining

    root = tmp_path_factory.mktemp("tiny_query_models")
    torch.manual_seed(0)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The vocabulary is written out, not trained: tokenizers' WordPieceTrainer numbers tokens differently in
    # every process (hash-map order), which made the Q-Former tests see another random BERT each session.
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = sorted({word for text in CORPUS for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))})
    letters = sorted({letter for word in words for letter in word})
    vocab = [*specials, *letters, *(f"##{letter}" for letter in letters), *(w for w in words if len(w) > 1)]
    backend = Tokenizer(models.WordPiece({token: index for index, token in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer = normalizer, pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", backend.token_to_id("[CLS]")),
                                                 ("[SEP]", backend.token_to_id("[SEP]"))])
    tokenizer = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    # initializer_range 0.2, not BERT's 0.02: at 0.02 a random 32-wide BERT passes almost nothing between
    # tokens (every caption's [CLS] comes out the same), a poor stand-in for a pretrained encoder.
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                initializer_range=0.2))
    bert.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    mae = ViTMAEForPreTraining(ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4, intermediate_size=64, decoder_hidden_size=16,
                                            decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
                                            decoder_intermediate_size=32, mask_ratio=0.5, norm_pix_loss=True))
    mae.save_pretrained(root / "mae")
    return {"bert": str(root / "bert"), "mae": str(root / "mae")}
