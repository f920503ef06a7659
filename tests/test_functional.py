"""The pure contrastive losses against values worked out by hand on 2x2 examples.

Each expected value is written from the cosines read off the example (not by calling the function), so a
wrong normalisation, transpose, sign or reduction shows up as a number mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.losses.functional import cg_contrastive, info_nce, qformer_itc, sigmoid_contrastive

SQRT2 = math.sqrt(2.0)


def logsumexp(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# a = [[3, 4], [0, 2]] -> unit rows [0.6, 0.8], [0, 1]; b = [[1, 0], [1, 1]] -> [1, 0], [1/sqrt2, 1/sqrt2]
A = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
B = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
COS = [[0.6, 1.4 / SQRT2], [0.0, 1.0 / SQRT2]]  # cos(a_i, b_j), by hand


def test_info_nce_hand_computed():
    scale = 2.0
    l = [[scale * c for c in row] for row in COS]
    rows = ((logsumexp(l[0][0], l[0][1]) - l[0][0]) + (logsumexp(l[1][0], l[1][1]) - l[1][1])) / 2
    cols = ((logsumexp(l[0][0], l[1][0]) - l[0][0]) + (logsumexp(l[0][1], l[1][1]) - l[1][1])) / 2
    expected = (rows + cols) / 2
    assert info_nce(A, B, scale).item() == pytest.approx(expected, abs=1e-6)
    assert info_nce(A, B, torch.tensor(scale)).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_identity_value():
    # cos = identity, scale 1: every row and column is CE over logits (1, 0) -> log(1 + e^-1)
    eye = torch.eye(2)
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)


def test_sigmoid_contrastive_hand_computed():
    scale, bias = 2.0, -1.0
    l = [[scale * c + bias for c in row] for row in COS]
    expected = -(log_sigmoid(l[0][0]) + log_sigmoid(-l[0][1]) + log_sigmoid(-l[1][0]) + log_sigmoid(l[1][1])) / 2
    assert sigmoid_contrastive(A, B, scale, bias).item() == pytest.approx(expected, abs=1e-6)


def test_cg_contrastive_hand_computed():
    # pooled visual: image 0 mean([1,0],[1,2]) = [1,1] -> [1,1]/sqrt2; image 1 mean([0,1],[0,3]) = [0,2] -> [0,1]
    visual = torch.tensor([[[1.0, 0.0], [1.0, 2.0]], [[0.0, 1.0], [0.0, 3.0]]])
    nan = float("nan")  # padded positions may hold garbage; they must not leak into value or gradient
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [nan, nan]], [[0.0, 1.0], [nan, 5.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    scale = 3.0
    # s[0,0] = mean(1/sqrt2, 1/sqrt2); s[0,1] = 1/sqrt2; s[1,0] = mean(0, 1) = 0.5; s[1,1] = 1
    s = [[scale / SQRT2, scale / SQRT2], [scale * 0.5, scale * 1.0]]
    expected = ((logsumexp(*s[0]) - s[0][0]) + (logsumexp(*s[1]) - s[1][1])) / 2
    visual.requires_grad_(True)
    loss = cg_contrastive(visual, text, mask, scale)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(visual.grad).all() and visual.grad.abs().sum() > 0


def test_qformer_itc_hand_computed():
    queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = 2.0
    # best query per (i, j): image 0 matches both texts with cos 1; image 1 both with 1/sqrt2
    sim = [[2.0, 2.0], [SQRT2, SQRT2]]
    rows = math.log(2.0)  # each row is two equal logits
    col0 = [logsumexp(sim[0][0], sim[1][0]) - v for v in (sim[0][0], sim[1][0])]  # -log p per class
    col1 = [logsumexp(sim[0][1], sim[1][1]) - v for v in (sim[0][1], sim[1][1])]
    cols = (col0[0] + col1[1]) / 2
    assert qformer_itc(queries, text, scale).item() == pytest.approx((rows + cols) / 2, abs=1e-6)
    eps = 0.2  # smoothing: (1 - eps) * nll + eps * mean over classes of -log p
    cols_smooth = ((1 - eps) * col0[0] + eps * sum(col0) / 2 + (1 - eps) * col1[1] + eps * sum(col1) / 2) / 2
    assert qformer_itc(queries, text, scale, label_smoothing=eps).item() == pytest.approx(
        (rows + cols_smooth) / 2, abs=1e-6)


def test_symmetry_and_invariances():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    perm = torch.randperm(5)
    for loss in (lambda x, y: info_nce(x, y, 7.0), lambda x, y: sigmoid_contrastive(x, y, 7.0, -2.0)):
        assert loss(a, b).item() == pytest.approx(loss(b, a).item(), abs=1e-5)  # swap modalities
        assert loss(a, b).item() == pytest.approx(loss(a[perm], b[perm]).item(), abs=1e-5)  # reorder pairs
        assert loss(a, b).item() == pytest.approx(loss(3.0 * a, b).item(), abs=1e-5)  # cosine: scale-free
    # a single query per image makes the Q-Former ITC plain InfoNCE
    assert qformer_itc(a.unsqueeze(1), b, 7.0).item() == pytest.approx(info_nce(a, b, 7.0).item(), abs=1e-5)
    # one visual token and one text token per caption: CG is the image->text half of InfoNCE
    mask = torch.ones(5, 1, dtype=torch.bool)
    expected = torch.nn.functional.cross_entropy(
        7.0 * torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T,
        torch.arange(5))
    assert cg_contrastive(a.unsqueeze(1), b.unsqueeze(1), mask, 7.0).item() == pytest.approx(expected.item(), abs=1e-5)


def test_gradients_reach_inputs_and_learnable_scale():
    torch.manual_seed(0)
    a, b = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    visual, text_tokens = torch.randn(4, 3, 6, requires_grad=True), torch.randn(4, 5, 6, requires_grad=True)
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-3.0, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 4, dtype=torch.bool)
    cases = [(info_nce(a, b, log_scale.exp()), [a, b, log_scale]),
             (sigmoid_contrastive(a, b, log_scale.exp(), bias), [a, b, log_scale, bias]),
             (cg_contrastive(visual, text_tokens, mask, log_scale.exp()), [visual, text_tokens, log_scale]),
             (qformer_itc(visual, b, log_scale.exp(), label_smoothing=0.1), [visual, b, log_scale])]
    for loss, inputs in cases:
        assert loss.dim() == 0
        for grad in torch.autograd.grad(loss, inputs):
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # padded text positions get no gradient
    (grad,) = torch.autograd.grad(cg_contrastive(visual, text_tokens, mask, 10.0), text_tokens)
    assert grad[:, 3:].abs().sum() == 0


def test_perfect_alignment_at_high_scale_is_near_zero():
    eye = torch.eye(4)
    assert info_nce(eye, 2 * eye, 100.0).item() < 1e-6
    assert sigmoid_contrastive(eye, eye, 100.0, -50.0).item() < 1e-6
    mask = torch.ones(4, 2, dtype=torch.bool)
    tokens = eye.unsqueeze(1).repeat(1, 2, 1)  # each caption's tokens point where its image points
    assert cg_contrastive(tokens, tokens, mask, 100.0).item() < 1e-6
    axes = torch.eye(8)  # query 0 of image i points at text i, query 1 somewhere no text points
    queries = torch.stack([axes[:4], axes[4:]], dim=1)
    assert qformer_itc(queries, axes[:4], 100.0).item() < 1e-6


def test_shape_errors():
    with pytest.raises(ValueError, match="same"):
        info_nce(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="empty"):
        info_nce(torch.randn(0, 4), torch.randn(0, 4), 1.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        sigmoid_contrastive(torch.randn(3), torch.randn(3), 1.0, 0.0)
    with pytest.raises(ValueError, match="same"):
        sigmoid_contrastive(torch.randn(3, 4), torch.randn(3, 5), 1.0, 0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), torch.ones(2))
    with pytest.raises(ValueError, match=r"caption\(s\) \[1\] have no valid token"):
        cg_contrastive(torch.randn(2, 3, 4), torch.randn(2, 5, 4),
                       torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="share B and D"):
        cg_contrastive(torch.randn(2, 3, 4), torch.randn(3, 5, 4), torch.ones(3, 5, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="text_mask"):
        cg_contrastive(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.ones(2, 4, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="empty"):
        cg_contrastive(torch.randn(0, 3, 4), torch.randn(0, 5, 4), torch.ones(0, 5, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="share B and D"):
        qformer_itc(torch.randn(2, 3, 4), torch.randn(2, 5), 1.0)
    with pytest.raises(ValueError, match=r"\[B, Q, D\]"):
        qformer_itc(torch.randn(2, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        qformer_itc(torch.randn(2, 3, 4), torch.randn(2, 4), 1.0, label_smoothing=1.5)
