"""Training loss of the matching baseline: InfoNCE on ground-truth pixel-point pairs + two overlap BCEs.

Ground truth from T_gt and K: a coarse point seen by the camera (z > 0, inside the image, as
``losses.in_frustum_targets``) pairs with the pixel token its projection falls in. Its negatives are the tokens
whose centre lies more than ``negative_margin_px`` from the projection (nearer ones are ignored); in the other
direction, the token's negatives are the points not seen or projected farther than the margin from its centre.
Overlap targets: a token holds the projection of any input point (level 0 of the pyramid); a coarse point is seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import project_pose

LOSS_DEFAULTS = {
    "desc": 1.0,  # weight of the descriptor loss (mean of the two InfoNCE directions)
    "overlap": 1.0,  # weight of each overlap BCE (pixels, points)
    "temperature": 0.1,  # InfoNCE temperature on cosine similarities
    "negative_margin_px": 8.0,  # input pixels; two tokens at stride 4
}
"""The ``loss`` config section of the baseline."""


def token_index(uv: torch.Tensor, stride: int, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major index of the token (stride x stride input pixels) holding each pixel uv (..., 2) -> (...),
    clamped to the (rows, columns) grid."""
    column = torch.div(uv[..., 0] + 0.5, stride, rounding_mode="floor").long().clamp(0, grid[1] - 1)
    row = torch.div(uv[..., 1] + 0.5, stride, rounding_mode="floor").long().clamp(0, grid[0] - 1)
    return row * grid[1] + column


def info_nce(similarity: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """-log softmax of the positive among itself and the negatives, per row: similarity (B, A, C), positive (B, A)
    the column of each row's positive, negative (B, A, C) bool (the positive's own column is never a negative)
    -> (B, A); 0 where a row has no negative. Masked columns get a finite -1e4 so that such rows keep finite
    gradients (any similarity / temperature is far above it)."""
    positive_similarity = similarity.gather(-1, positive[..., None])[..., 0]
    negative = negative.scatter(-1, positive[..., None], False)
    negatives = similarity.masked_fill(~negative, -1e4).logsumexp(dim=-1)
    return torch.logaddexp(negatives, positive_similarity) - positive_similarity


def matching_loss(out: dict, batch: dict, token_stride: int, weights: dict | None = None) -> dict[str, torch.Tensor]:
    """Loss terms of ``MatchingNet`` outputs for a ``Collate`` batch whose tokens have ``token_stride``.

    Returns desc (InfoNCE, mean over the seen coarse points of both directions), overlap_pixel and overlap_point
    (BCE with logits), and total = desc * desc + overlap * (overlap_pixel + overlap_point) with ``weights`` over
    ``LOSS_DEFAULTS``.
    """
    w = {**LOSS_DEFAULTS, **(weights or {})}
    T_gt, K = batch["T_gt"], batch["K"]
    H, W = batch["image"].shape[-2:]
    grid, pixel_uv = (H // token_stride, W // token_stride), out["pixel_uv"]
    with torch.no_grad():
        uv_all, _, seen_all = project_pose(batch["points"], T_gt, K, H, W)
        pixel_target = torch.zeros_like(out["pixel_logits"]).scatter_add_(
            1, token_index(uv_all, token_stride, grid), seen_all.to(out["pixel_logits"].dtype)) > 0
        uv, _, seen = project_pose(out["coarse_xyz"], T_gt, K, H, W)  # (B, M, 2), (B, M)
        cells = token_index(uv, token_stride, grid)  # (B, M)
        far_pixels = torch.cdist(uv, pixel_uv[None].expand(len(uv), -1, -1)) > w["negative_margin_px"]
        far_points = ~seen[:, None] | (torch.cdist(pixel_uv[cells], uv) > w["negative_margin_px"])  # (B, M, M)
        itself = torch.arange(uv.shape[1], device=uv.device).expand_as(cells)  # (B, M): row j's positive is j

    similarity = out["point_desc"] @ out["pixel_desc"].transpose(1, 2) / w["temperature"]  # (B, M, T)
    point_to_pixel = info_nce(similarity, cells, far_pixels)
    # Row j, column k: similarity of point k to the token of point j.
    token_to_point = similarity.gather(2, cells[:, None].expand_as(far_points)).transpose(1, 2)
    pixel_to_point = info_nce(token_to_point, itself, far_points)
    desc = ((point_to_pixel + pixel_to_point) / 2 * seen).sum() / seen.sum().clamp_min(1)
    losses = {
        "desc": desc,
        "overlap_pixel": F.binary_cross_entropy_with_logits(out["pixel_logits"], pixel_target.float()),
        "overlap_point": F.binary_cross_entropy_with_logits(out["point_logits"], seen.float()),
    }
    losses["total"] = w["desc"] * desc + w["overlap"] * (losses["overlap_pixel"] + losses["overlap_point"])
    return losses
