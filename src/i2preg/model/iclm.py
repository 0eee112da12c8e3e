"""ICLM: implicit correspondence learning (METHOD section 2).

N_q learnable queries alternate attention over themselves, the pixel tokens and the masked point tokens; each
query then reads a 2D keypoint (soft-argmax over the token centres) and a 3D keypoint (soft-argmax over the
masked coarse points).

Beyond the paper (``anchor_sigma`` > 0; 0 is the paper's ICLM): query q gets an anchor pixel a_q, the centre of
its cell of a grid over the image, added to it as the pixels' positional encoding of a_q; its 2D heatmap
logits get log N(uv_t; a_q, s^2) and its 3D heatmap logits log N(pi(T_f p_j); a_q, s^2), with s = anchor_sigma
x image width and pi(T_f p_j) the point's projection through the frustum pose. The queries start spread over
the image and paired through the frustum pose, instead of being free to collapse onto one pair.

Coarse to fine (``windows``; the reference code's ICL++, empty for the paper's single scale): the global stage
(``num_iterations`` blocks) runs over the token map average-pooled to ``global_stride`` (0: the token stride);
then each window [stride, radius_px] adds a self-attention and a pixel attention whose keys, like its 2D
heatmap, are only the n x n = (2 radius / stride)^2 tokens sampled (bilinearly, from the map pooled to that
stride) at stride spacing about a centre: the query's previous 2D keypoint (``window_centre`` "keypoint", the
reference code), or for the first window the projection of its 3D keypoint through the frustum pose ("frustum",
beyond the reference: an untrained window's uniform heatmap then pairs as GPDM's pose does). The window stages
refine the 2D keypoint of the global stage's 3D keypoint (the coarse points have no finer level here), and
desc_3d stays the global stage's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import project_points
from .image_encoder import token_centres
from .layers import AttentionBlock, bilinear_rows, masked_softmax, mlp


class WindowStage(nn.Module):
    """A window stage: the queries' self-attention and pixel attention, and the projections of its 2D heatmap's
    logits (the 3D keypoint is the global stage's, so its point attention would train nothing)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.offset_pos = mlp([2, d, d])  # each sample's offset from the window's centre, in radii
        self.self_attention, self.pixel_attention = AttentionBlock(d, heads), AttentionBlock(d, heads)
        self.heat_query_2d, self.heat_key_2d = nn.Linear(d, d), nn.Linear(d, d)


class ICLM(nn.Module):
    def __init__(self, image_dim: int, point_dim: int, conf: dict):
        super().__init__()
        d, heads, iterations = conf["dim"], conf["num_heads"], conf["num_iterations"]
        self.anchor_sigma = float(conf.get("anchor_sigma", 0.0))
        self.global_stride = int(conf.get("global_stride", 0))
        self.windows = [(int(stride), float(radius)) for stride, radius in conf.get("windows", ())]
        self.window_centre = conf.get("window_centre", "keypoint")
        if self.window_centre not in ("keypoint", "frustum"):
            raise ValueError(f"iclm.window_centre must be 'keypoint' or 'frustum', got {self.window_centre!r}")
        self.queries = nn.Parameter(torch.randn(conf["num_queries"], d))
        self.anchor_cells = conf["num_queries"]  # the anchor grid's cell count, fixed by training
        self.register_buffer("query_cells", torch.arange(conf["num_queries"]), persistent=False)  # each query's cell
        self.image_proj = nn.Linear(image_dim, d)
        self.point_proj = nn.Linear(point_dim, d)
        self.pixel_pos = mlp([2, d, d])
        self.point_pos = mlp([3, d, d])
        self.self_attention_1 = nn.ModuleList(AttentionBlock(d, heads) for _ in range(iterations))
        self.pixel_attention = nn.ModuleList(AttentionBlock(d, heads) for _ in range(iterations))
        self.self_attention_2 = nn.ModuleList(AttentionBlock(d, heads) for _ in range(iterations))
        self.point_attention = nn.ModuleList(AttentionBlock(d, heads) for _ in range(iterations))
        self.heat_query_2d, self.heat_key_2d = nn.Linear(d, d), nn.Linear(d, d)
        self.heat_query_3d, self.heat_key_3d = nn.Linear(d, d), nn.Linear(d, d)
        self.window_stages = nn.ModuleList(WindowStage(d, heads) for _ in self.windows)

    def forward(
        self,
        token_map: torch.Tensor,
        image_size: tuple[int, int],
        point_feats: torch.Tensor,
        point_xyz: torch.Tensor,
        point_xyz_frustum: torch.Tensor,
        mask: torch.Tensor,
        K: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """token_map: (B, Ci, h, w) pixel tokens at stride H / h of the (H, W) = image_size input;
        point_feats: (B, M, Cp), point_xyz: (B, M, 3) cloud frame, point_xyz_frustum: (B, M, 3) the same points in
        the frustum-pose camera frame (ICL's prior pose: GPDM's frustum pose, or the fine search's; positional
        encoding); mask: (B, M) bool, points that may be attended;
        K: (B, 3, 3) intrinsics (the prior-pose projections of anchors and of windows centred by ``window_centre:
        frustum``).

        Returns kp_2d (B, Nq, 2) pixels; kp_3d (B, Nq, 3) cloud frame; heatmap_2d (B, Nq, T) over the tokens
        whose input-image centres are heatmap_2d_uv, (T, 2) for the whole map or (B, Nq, T, 2) for per-query
        windows (exactly 0 on window samples outside the image); heatmap_3d (B, Nq, M) (exactly 0 on masked-out
        points); desc_2d, desc_3d (B, Nq, d): the queries after the last pixel / point attention. These are the
        last stage's; with ``windows``, coarse_stages lists the earlier stages' kp_2d, heatmap_2d and
        heatmap_2d_uv, global stage first.
        """
        H, W = image_size
        token_stride = H // token_map.shape[-2]
        pixel_map, pixel_uv = self._pixel_map(token_map, self.global_stride or token_stride, token_stride)
        pixel_tokens = pixel_map.flatten(2).transpose(1, 2) + self.pixel_pos(pixel_uv / pixel_uv.new_tensor([W, H]))
        point_tokens = self.point_proj(point_feats) + self.point_pos(point_xyz_frustum / 10)
        x = self.queries.expand(token_map.shape[0], -1, -1)
        prior_2d = prior_3d = 0.0
        if self.anchor_sigma > 0:
            anchors = anchor_grid(self.anchor_cells, H, W).to(x)[self.query_cells]
            x = x + self.pixel_pos(anchors / anchors.new_tensor([W, H]))
            variance = 2 * (self.anchor_sigma * W) ** 2
            point_uv_frustum = project_points(point_xyz_frustum, K)[0]
            prior_2d = -(anchors[:, None] - pixel_uv).square().sum(-1) / variance  # (Nq, T)
            prior_3d = -(anchors[:, None] - point_uv_frustum[:, None]).square().sum(-1) / variance  # (B, Nq, M)
        for self_1, pixel, self_2, point in zip(
            self.self_attention_1, self.pixel_attention, self.self_attention_2, self.point_attention
        ):
            x = self_1(x, x)
            x = desc_2d = pixel(x, pixel_tokens)
            x = self_2(x, x)
            x = desc_3d = point(x, point_tokens, mask)

        scale = 1 / math.sqrt(x.shape[-1])
        heatmap_2d = masked_softmax(
            self.heat_query_2d(desc_2d) @ self.heat_key_2d(pixel_tokens).transpose(1, 2) * scale + prior_2d, None
        )
        heatmap_3d = masked_softmax(
            self.heat_query_3d(desc_3d) @ self.heat_key_3d(point_tokens).transpose(1, 2) * scale + prior_3d, mask[:, None]
        )
        stages = [{"kp_2d": heatmap_2d @ pixel_uv, "heatmap_2d": heatmap_2d, "heatmap_2d_uv": pixel_uv}]
        centre = stages[0]["kp_2d"]
        if self.window_centre == "frustum":
            centre = project_points(heatmap_3d @ point_xyz_frustum, K)[0]
        for (stride, radius), window_stage in zip(self.windows, self.window_stages):
            window_map = self._pixel_map(token_map, stride, token_stride)[0]
            offsets = window_offsets(round(2 * radius / stride), stride).to(centre)
            samples, window_uv, inside = sample_window(window_map, centre.detach(), offsets, stride, (H, W))
            # the first sum out of place, since a Linear's output on a 4-D input is a view, whose in-place sums would
            # copy their whole gradient in the backward pass
            window = self.pixel_pos(window_uv / window_uv.new_tensor([W, H])) + window_stage.offset_pos(offsets / radius)
            window = window.add_(samples)
            B, Q, n2, d = window.shape
            x = window_stage.self_attention(x, x)
            desc_2d = window_stage.pixel_attention(x.reshape(B * Q, 1, d), window.reshape(B * Q, n2, d), inside.reshape(B * Q, n2))
            x = desc_2d = desc_2d.view(B, Q, d)
            # heat_key_2d(window) . query, with the key's weight moved onto the query: (B, Q, d) instead of a
            # (B, Q, n^2, d) projection of every sample
            query, key = window_stage.heat_query_2d(desc_2d), window_stage.heat_key_2d
            logits = (window @ (query @ key.weight)[..., None])[..., 0] + (query @ key.bias)[..., None]
            heatmap = masked_softmax(logits * scale, inside)
            centre = (heatmap[..., None] * window_uv).sum(-2)
            stages.append({"kp_2d": centre, "heatmap_2d": heatmap, "heatmap_2d_uv": window_uv})
        out = {**stages[-1], "kp_3d": heatmap_3d @ point_xyz, "heatmap_3d": heatmap_3d, "desc_2d": desc_2d,
               "desc_3d": desc_3d}
        if len(stages) > 1:
            out["coarse_stages"] = stages[:-1]
        return out

    def _pixel_map(self, token_map: torch.Tensor, stride: int, token_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The token map average-pooled from its token_stride to ``stride`` and projected to the queries' width,
        (B, d, H / stride, W / stride), and its token centres (T, 2) in input-image pixels, row-major."""
        if stride % token_stride:
            raise ValueError(f"ICLM's stride {stride} is no multiple of the token stride {token_stride}")
        pooled = F.avg_pool2d(token_map, stride // token_stride) if stride > token_stride else token_map
        projected = self.image_proj(pooled.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return projected, token_centres(*pooled.shape[-2:], stride, device=token_map.device)


def window_offsets(size: int, stride: int) -> torch.Tensor:
    """(n^2, 2) pixel offsets (u, v), row-major, of an n x n (n = size) window's samples from its centre:
    stride * (i - (n - 1) / 2)."""
    steps = (torch.arange(size) - (size - 1) / 2) * stride
    dv, du = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([du.flatten(), dv.flatten()], dim=-1)


def sample_window(token_map: torch.Tensor, centre: torch.Tensor, offsets: torch.Tensor, stride: int,
                  image_size: tuple[int, int]):
    """Bilinear samples of a (B, C, h, w) token map at ``stride`` at each centre (B, Q, 2) + offsets (S, 2),
    input-image pixels; beyond the map's border pixels, the border's values (``F.grid_sample``'s bilinear sampling,
    align_corners False, border padding, up to float rounding). Each sample's four corner rows of the flattened map
    are summed by ``layers.bilinear_rows``: on 2 CPU threads, for ICLM's window (8 x 64 windows of 256 samples of
    64 channels), forward 2.3 and backward 3.5 times faster than ``grid_sample``, whose output, permuted to (B, Q, S,
    C), is not contiguous either. No gradient to the centres.

    Returns the samples (B, Q, S, C), their input-image pixels (B, Q, S, 2) and (B, Q, S) bool: the sample lies
    inside the (H, W) = image_size image.
    """
    B, C, h, w = token_map.shape
    uv = centre.detach()[:, :, None] + offsets
    x = ((uv[..., 0] - (stride - 1) / 2) / stride).clamp(0, w - 1)  # map pixels, clamped to the border's centres
    y = ((uv[..., 1] - (stride - 1) / 2) / stride).clamp(0, h - 1)
    x0, y0 = x.floor().clamp(max=max(w - 2, 0)), y.floor().clamp(max=max(h - 2, 0))
    fx, fy = x - x0, y - y0  # 1 on the last pixel (its left or upper neighbour the first corner)
    gx, gy = 1 - fx, 1 - fy
    sample = torch.arange(B, device=uv.device).view(B, 1, 1)
    corner = ((sample * h + y0.long()) * w + x0.long()).flatten()
    right, down = int(w > 1), w * int(h > 1)  # a one-pixel-wide map's right corner is itself (weight 0)
    corners = corner[:, None] + torch.tensor([0, right, down, down + right], device=uv.device)
    weights = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], dim=-1).flatten(0, 2)
    table = token_map.permute(0, 2, 3, 1).reshape(-1, C)  # (B h w, C)
    samples = bilinear_rows(table, corners, weights).view(*uv.shape[:3], C)
    H, W = image_size
    inside = (uv[..., 0] >= 0) & (uv[..., 0] <= W - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)
    return samples, uv, inside


def anchor_grid(num: int, height: int, width: int) -> torch.Tensor:
    """(num, 2) input-image pixels (u, v): the centres of the first ``num`` cells, row-major, of a grid of about
    square cells over a height x width image with at least ``num`` cells."""
    rows = max(1, round(math.sqrt(num * height / width)))
    cols = math.ceil(num / rows)
    v, u = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([(u + 0.5) * width / cols, (v + 0.5) * height / rows], dim=-1).reshape(-1, 2)[:num].float()
