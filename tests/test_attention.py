"""AttentionBlock's fused attention, and its attention on the unprojected keys where the queries are few, equal the
explicit softmax(q k^T / sqrt(d)) v they replaced (reference below), masked keys included."""

import math

import pytest
import torch

from i2preg.model.layers import AttentionBlock, masked_softmax


def explicit_attention(block, x, source, source_mask=None):
    B, Q, d = x.shape
    q, k, v = block._heads(block.to_query(x)), block._heads(block.to_key(source)), block._heads(block.to_value(source))
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = masked_softmax(logits, None if source_mask is None else source_mask[:, None, None])
    x = block.norm_attention(x + block.merge((weights @ v).transpose(1, 2).reshape(B, Q, d)))
    return block.norm_ffn(x + block.ffn(x))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("keys", [30, 50])  # 10 queries x 4 heads: fused kernel; fewer than the keys: unprojected keys
def test_output_and_gradients_equal_the_explicit_attention(masked, keys):
    torch.manual_seed(0)
    block = AttentionBlock(32, 4)
    x, source = torch.randn(3, 10, 32, requires_grad=True), torch.randn(3, keys, 32, requires_grad=True)
    mask = torch.rand(3, keys) < 0.3 if masked else None
    fused, explicit = block(x, source, mask), explicit_attention(block, x, source, mask)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    target = torch.randn_like(fused)
    wrt = [x, source, *block.parameters()]
    for a, b in zip(torch.autograd.grad((fused * target).sum(), wrt), torch.autograd.grad((explicit * target).sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_sample_with_every_key_masked_gets_uniform_weights_as_before():
    torch.manual_seed(2)
    block = AttentionBlock(16, 2)
    x, source = torch.randn(2, 4, 16), torch.randn(2, 20, 16)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1] = False
    torch.testing.assert_close(block(x, source, mask), explicit_attention(block, x, source, mask))


def test_masked_keys_do_not_change_the_output():
    torch.manual_seed(1)
    block = AttentionBlock(16, 2)
    x, source = torch.randn(2, 4, 16), torch.randn(2, 20, 16)
    mask = torch.arange(20).expand(2, -1) < 12
    changed = source.clone()
    changed[:, 12:] = 100 * torch.randn(2, 8, 16)
    torch.testing.assert_close(block(x, source, mask), block(x, changed, mask))
