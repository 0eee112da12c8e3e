"""ICLM: implicit correspondence learning (METHOD section 2).

N_q learnable queries alternate attention over themselves, the pixel tokens and the masked point tokens; each
query then reads a 2D keypoint (soft-argmax over the token centres) and a 3D keypoint (soft-argmax over the
masked coarse points).

Beyond the paper (``anchor_sigma`` > 0; 0 is the paper's ICLM): query q gets an anchor pixel a_q, the centre of
its cell of a grid over the image, added to it as the pixels' positional encoding of a_q; its 2D heatmap
logits get log N(uv_t; a_q, s^2) and its 3D heatmap logits log N(pi(T_f p_j); a_q, s^2), with s = anchor_sigma
x image width and pi(T_f p_j) the point's projection through the frustum pose. The queries start spread over
the image and paired through the frustum pose, instead of being free to collapse onto one pair.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import AttentionBlock, masked_softmax, mlp


class ICLM(nn.Module):
    def __init__(self, image_dim: int, point_dim: int, conf: dict):
        super().__init__()
        d, heads, iterations = conf["dim"], conf["num_heads"], conf["num_iterations"]
        self.anchor_sigma = float(conf.get("anchor_sigma", 0.0))
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

    def forward(
        self,
        pixel_feats: torch.Tensor,
        pixel_uv: torch.Tensor,
        image_size: tuple[int, int],
        point_feats: torch.Tensor,
        point_xyz: torch.Tensor,
        point_xyz_frustum: torch.Tensor,
        mask: torch.Tensor,
        point_uv_frustum: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """pixel_feats: (B, T, Ci) tokens, pixel_uv: (T, 2) their centres in input-image pixels, image_size (H, W);
        point_feats: (B, M, Cp), point_xyz: (B, M, 3) cloud frame, point_xyz_frustum: (B, M, 3) the same points in
        the frustum-pose camera frame (positional encoding); mask: (B, M) bool, points that may be attended;
        point_uv_frustum: (B, M, 2) their projections through the frustum pose (needed with ``anchor_sigma``).

        Returns kp_2d (B, Nq, 2) pixels; kp_3d (B, Nq, 3) cloud frame; heatmap_2d (B, Nq, T); heatmap_3d (B, Nq, M)
        (exactly 0 on masked-out points); desc_2d, desc_3d (B, Nq, d): the queries after the last pixel / point
        attention.
        """
        H, W = image_size
        pixel_tokens = self.image_proj(pixel_feats) + self.pixel_pos(pixel_uv / pixel_uv.new_tensor([W, H]))
        point_tokens = self.point_proj(point_feats) + self.point_pos(point_xyz_frustum / 10)
        x = self.queries.expand(pixel_feats.shape[0], -1, -1)
        prior_2d = prior_3d = 0.0
        if self.anchor_sigma > 0:
            anchors = anchor_grid(self.anchor_cells, H, W).to(x)[self.query_cells]
            x = x + self.pixel_pos(anchors / anchors.new_tensor([W, H]))
            variance = 2 * (self.anchor_sigma * W) ** 2
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
        return {
            "kp_2d": heatmap_2d @ pixel_uv,
            "kp_3d": heatmap_3d @ point_xyz,
            "heatmap_2d": heatmap_2d,
            "heatmap_3d": heatmap_3d,
            "desc_2d": desc_2d,
            "desc_3d": desc_3d,
        }


def anchor_grid(num: int, height: int, width: int) -> torch.Tensor:
    """(num, 2) input-image pixels (u, v): the centres of the first ``num`` cells, row-major, of a grid of about
    square cells over a height x width image with at least ``num`` cells."""
    rows = max(1, round(math.sqrt(num * height / width)))
    cols = math.ceil(num / rows)
    v, u = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([(u + 0.5) * width / cols, (v + 0.5) * height / rows], dim=-1).reshape(-1, 2)[:num].float()
