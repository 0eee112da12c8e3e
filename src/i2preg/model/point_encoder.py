"""Point side: a rigid-KPConv encoder-decoder on the point pyramid precomputed by ``data.collate``.

Pyramid (batch keys, built on the data side; see ``i2preg.data.collate``), with L = len(widths):
- ``pyramid_xyz[l]``: (B, M_l, 3) cloud-frame points of level l; level 0 is the input cloud itself.
- ``pyramid_neighbors[l]``: (B, M_l, k) indices of the k nearest level-l points of each level-l point.
- ``pyramid_pools[l - 1]``: (B, M_l, k) indices of the k nearest level-(l-1) points of each level-l point.
- ``pyramid_upsamples[l - 1]``: (B, M_{l-1}) index of the nearest level-l point of each level-(l-1) point.
Level l works at the voxel size ``voxel_size * 2**l``. The encoder runs all L levels; the decoder goes back
up to ``coarse_level``, whose points are the coarse points (point tokens) of GPDM and ICLM.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RowIndex, gather, gather_rows, num_groups


def kernel_point_layout(num_points: int) -> torch.Tensor:
    """Fixed kernel disposition in the unit ball: (num_points, 3).

    One point at the centre, the others quasi-uniformly on a sphere of radius 0.66 (a Fibonacci lattice),
    the shell radius KPConv's own kernel generator aims for.
    """
    n = num_points - 1
    i = torch.arange(n, dtype=torch.float64) + 0.5
    polar = torch.arccos(1 - 2 * i / n)
    azimuth = math.pi * (1 + math.sqrt(5)) * i
    shell = torch.stack(
        [torch.sin(polar) * torch.cos(azimuth), torch.sin(polar) * torch.sin(azimuth), torch.cos(polar)], dim=-1
    )
    return torch.cat([torch.zeros(1, 3, dtype=torch.float64), 0.66 * shell]).float()


class _GroupedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, weights: torch.Tensor, counts: list[int]) -> torch.Tensor:
        out = rows.new_empty(len(rows), weights.shape[-1])
        for part, weight, result in zip(rows.split(counts), weights, out.split(counts)):
            torch.mm(part, weight, out=result)
        ctx.save_for_backward(rows, weights)
        ctx.counts = counts
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weights = ctx.saved_tensors
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[1] else None
        for k, (part, grad_part) in enumerate(zip(rows.split(ctx.counts), grad.split(ctx.counts))):
            if grad_rows is not None:
                torch.mm(grad_part, weights[k].T, out=grad_rows.split(ctx.counts)[k])
            if grad_weights is not None:
                torch.mm(part.T, grad_part, out=grad_weights[k])
        return grad_rows, grad_weights, None


def grouped_matmul(rows: torch.Tensor, weights: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """rows (E, C) in consecutive groups of ``counts`` rows, weights (G, C, D) -> (E, D): each group times its
    weight matrix, written in place of the concatenation of G matmuls. In the wider of the two dtypes (autocast does
    not reach the matmuls' ``out=``: under mixed precision the rows come in half precision, the weights in float32)."""
    dtype = torch.promote_types(rows.dtype, weights.dtype)
    return _GroupedMatmul.apply(rows.to(dtype), weights.to(dtype), counts)


class Influence(NamedTuple):
    """The nonzero kernel influences of one convolution's neighbourhoods: E entries, sorted by kernel point.

    Entry e carries support row ``support.index[e]`` (a flat index into B * S) to query row ``query[e]`` (into
    B * M) through kernel point k with weight ``weight[e]``; ``counts[k]`` entries belong to kernel point k.
    ``by_query`` sorts the entries by query, which then own ``query_counts`` (B * M,) entries each.
    KPConv's linear influence is zero beyond sigma of every kernel point, which most neighbours of a kNN
    neighbourhood are, so the convolution touches only these entries.
    """

    support: RowIndex
    query: torch.Tensor
    by_query: RowIndex
    query_counts: torch.Tensor
    weight: torch.Tensor
    counts: list[int]


class KernelEntries(NamedTuple):
    """The nonzero kernel influences as flat entries, the form ``torch.export`` traces (ONNX export, ``i2preg.export``:
    no Python number depends on the data). Entry e adds ``weight[e]`` times support row ``support[e]`` (a flat index
    into B * S) to slot ``slot[e]`` = query row x K + kernel point (into B * M * K), M = ``num_queries``."""

    support: torch.Tensor
    slot: torch.Tensor
    weight: torch.Tensor
    num_queries: int


def within_reach(offsets: torch.Tensor, kernel_points: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbours within reach of a kernel point and their squared distances to the kernel points: offsets
    (B, M, k, 3) from the query points and kernel_points (K, 3) in voxels -> near (E0,) the flat (b, m, n) within
    reach, sorted; squared (K, E0) |r - x_k|^2 / sigma^2, from one matmul (a rounding below 0 is possible)."""
    kernel_points = kernel_points / sigma
    reach = kernel_points.norm(dim=-1).max() + 1
    offsets = offsets.div(sigma).flatten(0, 2)  # (B M k, 3) in units of sigma
    near = (offsets.square().sum(-1) < reach**2).nonzero()[:, 0]
    offsets = offsets[near]
    squared = torch.addmm(kernel_points.square().sum(-1)[:, None], kernel_points, offsets.T, alpha=-2)
    return near, squared.add_(offsets.square().sum(-1))


@torch.no_grad()
def kernel_entries(offsets: torch.Tensor, neighbors: torch.Tensor, kernel_points: torch.Tensor, sigma: float,
                   num_supports: int) -> KernelEntries:
    """``kernel_influence``'s nonzero entries (the same arguments) as ``KernelEntries``."""
    B, M, k = neighbors.shape
    near, squared = within_reach(offsets, kernel_points, sigma)
    kernel, entry = (squared < 1).nonzero().unbind(1)
    batch_offsets = (torch.arange(B, device=neighbors.device) * num_supports).view(B, 1, 1)
    return KernelEntries(
        support=(neighbors + batch_offsets).flatten()[near[entry]],
        slot=near[entry] // k * len(kernel_points) + kernel,
        weight=1 - squared[kernel, entry].clamp_min(0).sqrt(),
        num_queries=M,
    )


@torch.no_grad()
def kernel_influence(offsets: torch.Tensor, neighbors: torch.Tensor, kernel_points: torch.Tensor, sigma: float,
                     num_supports: int) -> Influence:
    """Linear influences max(0, 1 - |r - x_k| / sigma) of kernel points x_k (K, 3) on the neighbour offsets r
    (B, M, k, 3) from their query point, for the neighbour indices (B, M, k) into S = ``num_supports`` support
    points: their nonzero entries (``Influence``). Geometry only: no gradient flows to the point coordinates.

    Only the neighbours within reach of a kernel point are scored (``within_reach``). The nonzero entries of the
    (E0, K) layout come out in query order; a stable sort of their kernel points gives the kernel order and the
    permutation between the two.
    """
    B, M, k = neighbors.shape
    near, squared = within_reach(offsets, kernel_points, sigma)
    entry, kernel = (squared.T < 1).nonzero().unbind(1)  # query order: by (query, neighbour, kernel point)
    weight = 1 - squared[kernel, entry].clamp_min(0).sqrt()
    kernel, query_place = kernel.sort(stable=True)  # kernel order; query_place[j]: entry j's place in query order
    entry = near[entry[query_place]]
    query = entry // k
    batch_offsets = (torch.arange(B, device=neighbors.device) * num_supports).view(B, 1, 1)
    kernel_place = torch.empty_like(query_place).scatter_(0, query_place, torch.arange(len(entry), device=entry.device))
    return Influence(
        support=RowIndex((neighbors + batch_offsets).flatten()[entry], B * num_supports),
        query=query,
        by_query=RowIndex(kernel_place, len(entry), inverse=query_place),
        query_counts=torch.bincount(query, minlength=B * M),
        weight=weight[query_place],
        counts=torch.bincount(kernel, minlength=len(kernel_points)).tolist(),
    )


class KPConv(nn.Module):
    """Rigid kernel point convolution over the nonzero kernel influences (``KPConvEncoder.influence``), which
    convolutions over the same neighbourhoods share: per kernel point, gather the support rows it reaches, scale
    them by their influence and multiply them by that kernel point's weight matrix; then sum them per query.
    """

    def __init__(self, in_dim: int, out_dim: int, num_kernel_points: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_kernel_points * in_dim, out_dim))  # rows: (kernel point, channel)
        bound = 1 / math.sqrt(self.weight.shape[0])  # as nn.Linear with fan-in K * in_dim
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, support_feats: torch.Tensor, influence: Influence | KernelEntries) -> torch.Tensor:
        """support_feats: (B, S, C), influence: over those S supports and M queries -> (B, M, out_dim).

        Where C < out_dim (the stem, C = 1 or 2) and over ``KernelEntries`` (export), the weighted rows are summed
        per (query, kernel point) slot first and the slots times the weight are one matmul: 6 times faster for the
        stem than messages of out_dim channels per entry, and 2-5 times slower for the blocks' C = out_dim
        convolutions (most of the B * M * K slots are empty)."""
        B, _, C = support_feats.shape
        if isinstance(influence, KernelEntries):
            M = influence.num_queries
            rows = support_feats.reshape(-1, C)[influence.support] * influence.weight[:, None]
            slots = rows.new_zeros(B * M * (len(self.weight) // C), C).index_add(0, influence.slot, rows)
            return (slots.view(B * M, -1) @ self.weight).view(B, M, -1)
        rows = gather_rows(support_feats.reshape(-1, C), influence.support) * influence.weight[:, None]
        if C < self.weight.shape[1]:  # narrow input (the stem): sum per (kernel point, query) slot, then one matmul
            K, num_queries = len(influence.counts), len(influence.query_counts)
            kernel = torch.repeat_interleave(torch.arange(K, device=rows.device),
                                             torch.tensor(influence.counts, device=rows.device))
            lengths = torch.bincount(kernel * num_queries + influence.query, minlength=K * num_queries)
            slots = torch.segment_reduce(rows, "sum", lengths=lengths, unsafe=True).view(K, num_queries, C)
            out = slots.transpose(0, 1).reshape(num_queries, K * C) @ self.weight
        else:
            messages = grouped_matmul(rows, self.weight.view(-1, C, self.weight.shape[1]), influence.counts)
            out = torch.segment_reduce(gather_rows(messages, influence.by_query), "sum",
                                       lengths=influence.query_counts, unsafe=True)
        return out.view(B, -1, out.shape[1])


def max_pool(feats: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """Channel-wise max over each neighbourhood: feats (B, S, C), neighbors (B, M, k) into S -> (B, M, C).

    Where feats needs a gradient, the maximum is read back from feats by its index, so that the gradient goes to
    the (first) maximal neighbour through a (B, M, C) scatter instead of through every gathered (B, M, k, C) entry;
    elsewhere (inference, the frozen encoder of stage 2) the same values come from ``amax``, which finds no index
    (4-6 times faster)."""
    if not (feats.requires_grad and torch.is_grad_enabled()):
        return gather(feats, neighbors).amax(dim=2)
    with torch.no_grad():
        source = neighbors.gather(2, gather(feats, neighbors).max(dim=2).indices)  # (B, M, C) row of each maximum
    return feats.gather(1, source)


class PointNorm(nn.GroupNorm):
    """GroupNorm over the channels of per-point features (B, M, C), statistics per sample."""

    def __init__(self, channels: int):
        super().__init__(num_groups(channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Unary(nn.Sequential):
    """Linear + norm (+ LeakyReLU) on per-point features (B, M, C)."""

    def __init__(self, in_dim: int, out_dim: int, activation: bool = True):
        super().__init__(nn.Linear(in_dim, out_dim, bias=False), PointNorm(out_dim))
        if activation:
            self.append(nn.LeakyReLU(0.1))


class ResnetBlock(nn.Module):
    """KPConv bottleneck block. Strided when its queries are another level than its supports
    (the shortcut then max-pools over the neighbours)."""

    def __init__(self, in_dim: int, out_dim: int, num_kernel_points: int):
        super().__init__()
        mid = out_dim // 2
        self.reduce = Unary(in_dim, mid)
        self.conv = KPConv(mid, mid, num_kernel_points)
        self.conv_norm = nn.Sequential(PointNorm(mid), nn.LeakyReLU(0.1))
        self.expand = Unary(mid, out_dim, activation=False)
        self.shortcut = nn.Identity() if in_dim == out_dim else Unary(in_dim, out_dim, activation=False)

    def forward(self, support_feats, neighbors, influence: Influence, strided: bool = False):
        """support_feats: (B, S, C); neighbors: (B, M, k) into S; influence: of these neighbourhoods -> (B, M, out_dim)."""
        x = self.conv_norm(self.conv(self.reduce(support_feats), influence))
        skip = max_pool(support_feats, neighbors) if strided else support_feats
        return F.leaky_relu(self.expand(x) + self.shortcut(skip), 0.1)


class KPConvEncoder(nn.Module):
    """KPConv encoder over all pyramid levels and a nearest-upsampling decoder up to ``coarse_level``.

    The convolutions at level l use kernel points of radius ``kernel_radius`` voxels of level l; the strided
    blocks that pool level l-1 into level l use the voxel of level l-1, as in KPConv.
    """

    def __init__(self, conf: dict):
        super().__init__()
        widths, K = conf["widths"], conf["num_kernel_points"]
        self.voxel_size, self.sigma = conf["voxel_size"], conf["kernel_sigma"]
        self.register_buffer("kernel_points", kernel_point_layout(K) * conf["kernel_radius"], persistent=False)
        self.in_dim = 2 if conf["use_intensity"] else 1
        self.coarse_level = conf["coarse_level"]
        self.stem = KPConv(self.in_dim, widths[0], K)
        self.stem_norm = nn.Sequential(PointNorm(widths[0]), nn.LeakyReLU(0.1))
        self.downs = nn.ModuleList(ResnetBlock(w_in, w_out, K) for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.blocks = nn.ModuleList(ResnetBlock(w, w, K) for w in widths)
        self.ups = nn.ModuleList(
            Unary(widths[level] + widths[level - 1], widths[level - 1])
            for level in range(len(widths) - 1, self.coarse_level, -1)
        )  # coarsest first
        self.out_dim = widths[self.coarse_level]

    def influence(self, query_xyz, support_xyz, neighbors, level: int) -> Influence | KernelEntries:
        """Kernel influences of a convolution at the voxel size of ``level``: query_xyz (B, M, 3), support_xyz
        (B, S, 3), neighbors (B, M, k) into S. ``KernelEntries`` while ``torch.export`` traces the model (ONNX
        export), else ``Influence``."""
        voxel = self.voxel_size * 2**level
        offsets = gather(support_xyz, neighbors) - query_xyz[:, :, None]
        form = kernel_entries if torch.compiler.is_exporting() else kernel_influence
        return form(offsets / voxel, neighbors, self.kernel_points, self.sigma, support_xyz.shape[1])

    def forward(self, batch: dict, levels: bool = False):
        """-> coarse_xyz (B, M, 3) cloud frame, coarse_feats (B, M, out_dim) with M = M_coarse_level; with ``levels``
        also the encoder's features of every level, (B, M_l, widths[l]) (for the fine search: ``fine_features``)."""
        xyz, neighbors, pools = batch["pyramid_xyz"], batch["pyramid_neighbors"], batch["pyramid_pools"]
        feats = torch.ones_like(xyz[0][..., :1])
        if self.in_dim == 2:
            feats = torch.cat([feats, batch["intensity"][..., None]], dim=-1)
        influence = self.influence(xyz[0], xyz[0], neighbors[0], level=0)
        x = self.stem_norm(self.stem(feats, influence))
        skips = []
        for level, block in enumerate(self.blocks):
            if level > 0:
                pool_influence = self.influence(xyz[level], xyz[level - 1], pools[level - 1], level=level - 1)
                x = self.downs[level - 1](x, pools[level - 1], pool_influence, strided=True)
                influence = self.influence(xyz[level], xyz[level], neighbors[level], level=level)
            x = block(x, neighbors[level], influence)
            skips.append(x)
        for up, level in zip(self.ups, range(len(self.blocks) - 1, self.coarse_level, -1)):
            x = up(torch.cat([gather(x, batch["pyramid_upsamples"][level - 1]), skips[level - 1]], dim=-1))
        return (xyz[self.coarse_level], x, skips) if levels else (xyz[self.coarse_level], x)

    def fine_features(self, batch: dict, level: int, coarse_feats: torch.Tensor, skips: list[torch.Tensor]):
        """The points of a level finer than the coarse one, each with its encoder feature and the coarse feature of
        its nearest coarse point (through the pyramid's nearest-upsampling links): xyz (B, M_level, 3) cloud frame,
        feats (B, M_level, widths[level] + out_dim)."""
        if not 0 <= level < self.coarse_level:
            raise ValueError(f"the fine level must be finer than the coarse level {self.coarse_level}, got {level}")
        upsamples = batch["pyramid_upsamples"]
        index = upsamples[level]  # (B, M_level) into level + 1
        for hop in range(level + 1, self.coarse_level):
            index = gather(upsamples[hop][..., None], index)[..., 0]
        return batch["pyramid_xyz"][level], torch.cat([skips[level], gather(coarse_feats, index)], dim=-1)
