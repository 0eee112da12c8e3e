"""Explicit-matching baseline in the style of CorrI2P / VP2P-Match, on ICL's own encoders.

The image encoder + decoder give one descriptor and one overlap logit per pixel token (stride
``image_encoder.token_stride``); the KPConv encoder one descriptor and one overlap logit per coarse point. Each
overlap head also sees the other modality's global feature. At test time the pixels and points scored in the
overlap are matched by mutual nearest neighbours in descriptor space and the pose comes from EPnP + RANSAC
(``pnp``). Training: ``matching_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import deep_update
from ..model.icl import ICL
from ..model.image_encoder import ImageDecoder, ImageEncoder, token_centres
from ..model.layers import mlp
from ..model.point_encoder import KPConvEncoder
from .pnp import solve_pnp_ransac

MATCH_DEFAULTS = {
    "overlap_threshold": 0.5,  # pixels and points with overlap probability above it are matched
    "max_pixels": 4096,  # at most this many pixels (highest overlap scores first)
    "max_points": 1024,  # at most this many coarse points
}
"""The ``eval.matching`` config section."""


class MatchingNet(nn.Module):
    default_conf = {
        **{key: ICL.default_conf[key] for key in ("image_encoder", "point_encoder")},
        "matching": {"dim": 128, "hidden_dim": 128},  # descriptor size; width of the overlap heads
    }

    def __init__(self, conf: dict | None = None):
        super().__init__()
        self.conf = conf = deep_update(self.default_conf, conf or {})
        image_widths = list(conf["image_encoder"]["widths"])
        token_dim, self.token_stride = conf["image_encoder"]["token_dim"], conf["image_encoder"]["token_stride"]
        d, h = conf["matching"]["dim"], conf["matching"]["hidden_dim"]
        self.image_encoder = ImageEncoder(image_widths)
        self.image_decoder = ImageDecoder(image_widths, token_dim, self.token_stride)
        self.point_encoder = KPConvEncoder(conf["point_encoder"])
        point_dim = self.point_encoder.out_dim
        self.pixel_descriptor = mlp([token_dim, d, d])
        self.point_descriptor = mlp([point_dim, d, d])
        self.pixel_overlap = mlp([token_dim + point_dim, h, 1])
        self.point_overlap = mlp([point_dim + image_widths[-1], h, 1])

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: a ``data.collate.Collate`` batch. With T pixel tokens and M coarse points, returns
        pixel_uv (T, 2) token centres in input-image pixels; pixel_desc (B, T, D), L2-normalised;
        pixel_logits (B, T) overlap; coarse_xyz (B, M, 3) cloud frame; point_desc (B, M, D); point_logits (B, M)."""
        image_features = self.image_encoder(batch["image"])
        token_map = self.image_decoder(image_features)
        pixel_uv = token_centres(*token_map.shape[-2:], self.token_stride, device=token_map.device)
        pixels = token_map.flatten(2).transpose(1, 2)  # (B, T, C)
        coarse_xyz, points = self.point_encoder(batch)
        image_global = image_features[-1].mean(dim=(2, 3))[:, None].expand(-1, points.shape[1], -1)
        point_global = points.max(dim=1, keepdim=True).values.expand(-1, pixels.shape[1], -1)
        return {
            "pixel_uv": pixel_uv,
            "pixel_desc": F.normalize(self.pixel_descriptor(pixels), dim=-1),
            "pixel_logits": self.pixel_overlap(torch.cat([pixels, point_global], dim=-1))[..., 0],
            "coarse_xyz": coarse_xyz,
            "point_desc": F.normalize(self.point_descriptor(points), dim=-1),
            "point_logits": self.point_overlap(torch.cat([points, image_global], dim=-1))[..., 0],
        }


def mutual_nearest_neighbors(desc_a: torch.Tensor, desc_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) where desc_b[j] is the most similar (dot product) to desc_a[i] and vice versa.
    desc_a: (Na, D), desc_b: (Nb, D) -> two (K,) int64 tensors, i increasing."""
    if len(desc_a) == 0 or len(desc_b) == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    similarity = desc_a @ desc_b.T
    a_to_b, b_to_a = similarity.argmax(dim=1), similarity.argmax(dim=0)
    i = torch.nonzero(b_to_a[a_to_b] == torch.arange(len(desc_a), device=desc_a.device))[:, 0]
    return i, a_to_b[i]


def select_overlap(logits: torch.Tensor, threshold: float, cap: int) -> torch.Tensor:
    """Indices (K,) of the entries of logits (N,) with probability above threshold, at most ``cap``, best first."""
    scores = logits.sigmoid()
    top = scores.topk(min(cap, len(scores))).indices
    return top[scores[top] > threshold]


def match(out: dict, conf: dict | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample of ``MatchingNet`` outputs, the mutual matches among the overlap pixels and points
    (``MATCH_DEFAULTS``): a list of B (pixels (K, 2) input-image (u, v), points (K, 3) cloud frame)."""
    conf = {**MATCH_DEFAULTS, **(conf or {})}
    matches = []
    for pixel_desc, pixel_logits, point_desc, point_logits, xyz in zip(
        out["pixel_desc"], out["pixel_logits"], out["point_desc"], out["point_logits"], out["coarse_xyz"]
    ):
        pixels = select_overlap(pixel_logits, conf["overlap_threshold"], conf["max_pixels"])
        points = select_overlap(point_logits, conf["overlap_threshold"], conf["max_points"])
        i, j = mutual_nearest_neighbors(pixel_desc[pixels], point_desc[points])
        matches.append((out["pixel_uv"][pixels[i]], xyz[points[j]]))
    return matches


def estimate_poses(out: dict, K: torch.Tensor, eval_conf: dict | None = None):
    """Test time: ``match`` then ``pnp.solve_pnp_ransac`` per sample, with ``eval_conf``'s ``matching`` and ``pnp``
    sections. K: (B, 3, 3). Returns poses (B, 4, 4) float64 (identity on failure), success (B,) bool and the
    number of matches (B,) int64, all on the CPU."""
    eval_conf = eval_conf or {}
    results, counts = [], []
    for (pixels, points), intrinsics in zip(match(out, eval_conf.get("matching")), K.detach().double().cpu()):
        counts.append(len(pixels))
        results.append(solve_pnp_ransac(pixels.double().cpu().numpy(), points.double().cpu().numpy(),
                                        intrinsics.numpy(), eval_conf.get("pnp")))
    poses = torch.stack([torch.from_numpy(r.pose) for r in results])
    return poses, torch.tensor([r.success for r in results]), torch.tensor(counts)
