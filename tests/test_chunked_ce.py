"""The training loss over sequence chunks equals the unchunked masked cross-entropy, value
and gradient, so the fp32 logits of a whole batch never have to exist at once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.measures import masked_ce


def _reference(logits, targets, mask):
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                reduction="none").view_as(mask)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


@pytest.mark.parametrize("chunk_elements", [7 * 50, 50, 10 ** 9])  # 7 rows, 1 row, one chunk
def test_chunked_ce_equals_the_masked_mean_with_gradients(chunk_elements):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, 50, (3, 11), generator=g)
    mask = (torch.rand(3, 11, generator=g) > 0.3).float()
    ref = _reference(logits, targets, mask)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    got = masked_ce(logits, targets, mask, chunk_elements=chunk_elements)
    (got_grad,) = torch.autograd.grad(got * 1.0, logits)
    assert got.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(got_grad, ref_grad, atol=1e-6)
    assert got_grad[mask == 0].abs().max() == 0  # masked positions get no gradient


def test_chunked_ce_in_float32_and_bf16_logits_and_an_empty_mask():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 40, generator=g).requires_grad_()
    targets = torch.randint(0, 40, (2, 5), generator=g)
    mask = torch.ones(2, 5)
    got = masked_ce(logits, targets, mask, chunk_elements=80)
    assert got.item() == pytest.approx(_reference(logits, targets, mask).item(), abs=1e-6)
    got.backward()
    half = logits.detach().bfloat16().requires_grad_()
    masked_ce(half, targets, mask, chunk_elements=80).backward()
    assert half.grad.dtype == torch.bfloat16 and torch.allclose(half.grad.float(), logits.grad, atol=1e-2)
    assert masked_ce(logits, targets, torch.zeros(2, 5)).item() == 0.0
    with torch.no_grad():  # validation: no gradient kept
        assert masked_ce(logits, targets, mask).item() == pytest.approx(got.item(), abs=1e-6)
