"""Small building blocks shared by the ICL modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(dims: list[int], final_activation: bool = False) -> nn.Sequential:
    """Per-element MLP on (..., dims[0]) -> (..., dims[-1]): Linear layers with ReLU in between."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def num_groups(channels: int) -> int:
    """GroupNorm groups: about 4 channels per group, at most 32 groups."""
    return math.gcd(channels, min(32, max(1, channels // 4)))


def contiguous_rows(table: torch.Tensor) -> torch.Tensor:
    """table (S, C) with its rows contiguous in memory, copied if they are not. A map or cloud of one sample
    flattened from a channels-first (1, C, ...) layout is a transposed view (strides (1, S)); row lookups on it ran
    on one thread and several times slower (the bundled model at batch 1: its 12 such lookups 9.0 ms, the embedding
    bags of the scores 8-17 times slower), where a batch of several samples is copied by the flattening anyway."""
    return table.contiguous()


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Batched row lookup: x (B, S, C), index (B, ...) into S -> (B, ..., C). The rows are read from a
    contiguous table (``contiguous_rows``)."""
    B, S, C = x.shape
    offsets = (torch.arange(B, device=x.device) * S).view(-1, *([1] * (index.dim() - 1)))
    return contiguous_rows(x.reshape(B * S, C)).index_select(0, (index + offsets).flatten()).view(*index.shape, C)


class RowIndex:
    """A row lookup ``x[index]`` (``gather_rows``) whose backward pass sums the gradient rows of each source row as
    contiguous segments (``torch.segment_reduce``) instead of scattering them (index_add, whose CPU kernel splits
    the columns between threads and runs slower on two threads than on one). The sorting order this needs is
    computed on the first backward pass, so inference never pays for it; ``inverse`` gives it for a permutation."""

    def __init__(self, index: torch.Tensor, num_rows: int, inverse: torch.Tensor | None = None):
        self.index, self.num_rows, self.inverse = index, num_rows, inverse
        self._order: tuple[torch.Tensor, torch.Tensor] | None = None

    def transpose(self, grad: torch.Tensor) -> torch.Tensor:
        """grad (E, C) of the looked-up rows -> (num_rows, C), the sum over each source row's lookups."""
        if self.inverse is not None:
            return grad.index_select(0, self.inverse)
        if self._order is None:
            self._order = self.index.argsort(stable=True), torch.bincount(self.index, minlength=self.num_rows)
        order, counts = self._order
        return torch.segment_reduce(grad.index_select(0, order), "sum", lengths=counts, unsafe=True)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: RowIndex) -> torch.Tensor:
        ctx.rows = rows
        return x.index_select(0, rows.index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.rows.transpose(grad), None


def gather_rows(x: torch.Tensor, rows: RowIndex) -> torch.Tensor:
    """x (S, C) -> x[rows.index] (E, C), differentiable in x (read from ``contiguous_rows``)."""
    return _GatherRows.apply(contiguous_rows(x), rows)


class BilinearRows(torch.autograd.Function):
    """table (P, C), corners (E, 4) rows of it, weights (E, 4) -> (E, C): each row's weighted sum of its four corner
    rows. Forward: ``F.embedding_bag`` (a gather and weighted sum in one kernel, which PyTorch parallelises over the
    points: on 2 CPU threads 2.0-2.4 times faster than ``grid_sample`` on one stacked map, whose CPU kernel divides
    its work between threads by map and gathers each channel separately). Backward to the table: one ``index_add_``
    a corner, 2.4 times faster on 2 threads than the embedding bag's own backward (which sorts the E x 4 indices);
    the same gradient up to the order of its float sums."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, corners: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table if ctx.needs_input_grad[2] else None, corners, weights)
        ctx.num_rows = len(table)
        return F.embedding_bag(corners, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        table, corners, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_table = grad.new_zeros(ctx.num_rows, grad.shape[1])
            for corner in range(corners.shape[1]):
                grad_table.index_add_(0, corners[:, corner], grad * weights[:, corner, None])
        if ctx.needs_input_grad[2]:
            grad_weights = (table[corners] * grad[:, None]).sum(-1)
        return grad_table, None, grad_weights


def bilinear_rows(table: torch.Tensor, corners: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """table (P, C), corners (E, 4) rows of it, weights (E, 4) -> (E, C): each row's weighted sum of its four corner
    rows (a bilinear sample, with the table a flattened feature map), by ``BilinearRows``, the weights in the table's
    dtype (under mixed precision the table may be half precision); the ONNX export, which has no embedding bag,
    gathers the corners and sums them. The table is read through ``contiguous_rows`` (on a transposed view the
    embedding bag ran 8-17 times slower: 33,000 rows of 32 channels, 4.3-5.7 ms against 0.3)."""
    weights = weights.to(table.dtype)
    if torch.onnx.is_in_onnx_export():
        return (table[corners] * weights[..., None]).sum(1)
    return BilinearRows.apply(contiguous_rows(table), corners, weights)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim where mask (broadcastable, bool) is False gets exactly zero weight.

    Masked logits are replaced by the dtype's most negative finite number (not -inf), so exp underflows
    to exactly 0 whenever a row has one valid entry, and a fully masked row stays finite (uniform).
    """
    if mask is not None:
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return logits.softmax(dim=-1)


class AttentionBlock(nn.Module):
    """Multi-head scaled dot-product attention + FFN (d -> 2d -> d), each with residual and post-LayerNorm."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_query, self.to_key, self.to_value = (nn.Linear(dim, dim) for _ in range(3))
        self.merge = nn.Linear(dim, dim)
        self.norm_attention = nn.LayerNorm(dim)
        self.ffn = mlp([dim, 2 * dim, dim])
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, Q, d) attends to source: (B, S, d); source_mask: (B, S) bool, False = never attended (a sample
        with every key masked gets uniform weights, as ``masked_softmax`` gives)."""
        B, Q, d = x.shape
        bias = None  # masked_softmax's masking as an additive bias: the fused kernel never stores (B, heads, Q, S)
        if source_mask is not None:
            bias = torch.zeros(source_mask.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill_(~source_mask, torch.finfo(x.dtype).min)[:, None, None]
        q = self._heads(self.to_query(x))
        # fewer multiply-adds unprojected (``_attention_on_source``), and fewer logits a key than keys
        if Q * (self.num_heads - 1) < d and Q * self.num_heads < source.shape[1]:
            message = self._attention_on_source(q, source, bias)
        else:
            k, v = self._heads(self.to_key(source)), self._heads(self.to_value(source))
            message = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.norm_attention(x + self.merge(message.transpose(1, 2).reshape(B, Q, d)))
        return self.norm_ffn(x + self.ffn(x))

    def _attention_on_source(self, q: torch.Tensor, source: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The attention of q (B, heads, Q, d / heads) to the keys and values of source (B, S, d), without projecting
        source: the key's weight moves onto the queries (q . (W_k s + b_k) = (W_k^T q) . s + q . b_k), the value's after
        the weighted sum (the weights sum to 1: sum_j a_j (W_v s_j + b_v) = W_v sum_j a_j s_j + b_v). For S keys that
        takes about 2 heads Q S d multiply-adds against 2 S d^2 + 2 Q S d projected, fewer where Q (heads - 1) < d
        (ICLM's window: 1 query, 256 samples, 4 heads, d 64); the same attention up to float rounding. -> (B, heads,
        Q, d / heads)."""
        (B, heads, Q, head_dim), d = q.shape, source.shape[-1]
        key = self.to_key.weight.view(heads, head_dim, d)
        logits = (q @ key).flatten(1, 2) @ source.transpose(1, 2)  # (B, heads Q, S)
        # q . b_k, the same for every key (so it leaves the softmax as it is), added as the projected keys add it
        logits = (logits + (q @ self.to_key.bias.view(heads, head_dim, 1)).flatten(1, 2)) / math.sqrt(head_dim)
        if bias is not None:
            logits = logits + bias[:, 0]
        pooled = (logits.softmax(dim=-1) @ source).view(B, heads, Q, d)  # each head's weighted sum of the samples
        value = self.to_value.weight.view(heads, head_dim, d)
        return pooled @ value.transpose(1, 2) + self.to_value.bias.view(heads, 1, head_dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, S, d) -> (B, heads, S, d / heads)."""
        return t.view(t.shape[0], t.shape[1], self.num_heads, -1).transpose(1, 2)
