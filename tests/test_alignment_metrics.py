"""Alignment metrics on hand-made embeddings whose answers can be read off directly."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.losses.retrieval import modality_gap, retrieval_recall


def test_identical_sets_have_no_gap_and_perfect_recall():
    torch.manual_seed(0)
    embeds = torch.randn(6, 4)
    assert modality_gap(embeds, embeds.clone()) == pytest.approx(0.0, abs=1e-12)
    assert retrieval_recall(embeds, embeds.clone(), ks=(1, 5)) == {"i2t@1": 1.0, "t2i@1": 1.0,
                                                                    "i2t@5": 1.0, "t2i@5": 1.0}


def test_known_shift_gives_known_gap():
    # images at +x, texts at +y (lengths differ: rows are normalised first) -> centroids (1,0), (0,1)
    images = torch.tensor([[3.0, 0.0], [0.5, 0.0]])
    texts = torch.tensor([[0.0, 2.0], [0.0, 7.0], [0.0, 1.0]])
    assert modality_gap(images, texts) == pytest.approx(math.sqrt(2.0), abs=1e-12)
    # centroids (0.5, 0.5) and (-0.5, 0.5): distance 1
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    assert modality_gap(images, texts) == pytest.approx(1.0, abs=1e-12)


def test_recall_on_a_hand_made_three_by_three_case():
    images = torch.eye(3)
    # text 1 = (1, 0.5, 0): cosine 0.894 with image 0 but only 0.447 with its own image 1
    texts = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    # image -> text: image 0: (1, .894, 0) -> text 0; image 1: (0, .447, 0) -> text 1; image 2 -> text 2
    # text -> image: text 0 -> image 0; text 1: (.894, .447, 0) -> image 0 (wrong, own image 2nd); text 2 -> 2
    recall = retrieval_recall(images, texts, ks=(1, 2))
    assert recall["i2t@1"] == pytest.approx(1.0)
    assert recall["t2i@1"] == pytest.approx(2 / 3)
    assert recall["i2t@2"] == pytest.approx(1.0) and recall["t2i@2"] == pytest.approx(1.0)


def test_ties_count_at_random_tie_breaking():
    # a collapsed encoder (every embedding equal) must score chance K/N, not 1
    same = torch.ones(4, 3)
    recall = retrieval_recall(same, same, ks=(1, 2))
    assert recall["i2t@1"] == pytest.approx(0.25) and recall["t2i@2"] == pytest.approx(0.5)
    # two identical captions: each of their images finds its own one first with probability 1/2
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert retrieval_recall(images, texts, ks=(1,))["i2t@1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        retrieval_recall(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="empty"):
        retrieval_recall(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(ValueError, match=r"K=5 must be an integer in 1..3"):
        retrieval_recall(torch.randn(3, 4), torch.randn(3, 4), ks=(1, 5))
    with pytest.raises(ValueError, match="D=4 and text_embeds D=5"):
        retrieval_recall(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        modality_gap(torch.randn(3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="empty"):
        modality_gap(torch.randn(0, 4), torch.randn(3, 4))


# --- token level ------------------------------------------------------------------------------------------

from vlalign.eval.alignment import gap_score, nearest_words, tacs  # noqa: E402


def test_nearest_word_is_the_most_cosine_similar_regardless_of_norm():
    words = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    visual = torch.tensor([[50.0, 1.0, 0.0],  # huge norm, direction of word 0
                           [0.0, 0.2, 0.1],  # closest in angle to word 1
                           [-1.0, 0.0, 0.0]])  # opposite word 0: best is a 0-cosine word (1 or 2)
    index, best = nearest_words(visual, words)
    assert index[:2].tolist() == [0, 1]
    assert index[2].item() in (1, 2) and best[2].item() == pytest.approx(0.0, abs=1e-12)
    assert best[0].item() == pytest.approx(50 / math.sqrt(2501), abs=1e-9)


def test_gap_score_is_zero_on_word_directions_and_one_when_orthogonal():
    words = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert gap_score(torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.0, 0.0]]), words) == pytest.approx(0.0, abs=1e-12)
    assert gap_score(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]]), words) == pytest.approx(1.0, abs=1e-12)
    # one on a word, one at 60 degrees from its nearest: D = (0 + 0.5) / 2
    half = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.0, math.sqrt(0.75), 0.0]])
    assert gap_score(half, words) == pytest.approx(0.25, abs=1e-6)


def test_tacs_averages_the_top_visual_tokens_best_caption_match():
    caption = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cos60 = [0.5, 0.0, math.sqrt(0.75)]
    visual = torch.tensor([[2.0, 0.0, 0.0], cos60, [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    # per visual token best cosine: 1, 0.5, 0, 0
    assert tacs(visual, caption, top=1) == pytest.approx(1.0, abs=1e-9)
    assert tacs(visual, caption, top=2) == pytest.approx(0.75, abs=1e-6)
    assert tacs(visual, caption, top=10) == pytest.approx(0.375, abs=1e-6)  # fewer tokens than top: all
    with pytest.raises(ValueError, match="top must be a positive integer"):
        tacs(visual, caption, top=0)
    with pytest.raises(ValueError, match="D=3 .* D=2 differ"):
        tacs(visual, caption[:, :2])
