"""Image side: a light ResNet-style encoder (GroupNorm) and the FPN-like decoder that gives the pixel tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import num_groups


def normalize_image(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image, per-channel z-score of image (B, 3, H, W)."""
    mean = image.mean(dim=(2, 3), keepdim=True)
    std = image.std(dim=(2, 3), keepdim=True)
    return (image - mean) / (std + eps)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with GroupNorm."""

    def __init__(self, in_dim: int, out_dim: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(num_groups(out_dim), out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(num_groups(out_dim), out_dim)
        self.shortcut = nn.Identity()
        if stride != 1 or in_dim != out_dim:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_dim, out_dim, 1, stride, bias=False), nn.GroupNorm(num_groups(out_dim), out_dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x), inplace=True)


class ImageEncoder(nn.Module):
    """7x7 stride-2 stem, then two basic blocks at each of the strides 2, 4 and 8."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.GroupNorm(num_groups(widths[0]), widths[0]), nn.ReLU(True)
        )
        dims = [widths[0], *widths]
        self.stages = nn.ModuleList(
            nn.Sequential(BasicBlock(dims[i], dims[i + 1], stride=1 if i == 0 else 2), BasicBlock(dims[i + 1], dims[i + 1]))
            for i in range(len(widths))
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image: (B, 3, H, W) RGB in [0, 1] -> maps [(B, widths[i], H / 2^(i+1), W / 2^(i+1))], finest first."""
        x = self.stem(normalize_image(image))
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ImageDecoder(nn.Module):
    """FPN-like decoder from the coarsest encoder map up to the token stride (a power of 2 in [2, 2^stages])."""

    def __init__(self, widths: list[int], out_dim: int, token_stride: int):
        super().__init__()
        num_maps = len(widths) - token_stride.bit_length() + 2  # coarsest map first, down to the token stride
        if token_stride & (token_stride - 1) or not 1 <= num_maps <= len(widths):
            raise ValueError(f"token_stride must be a power of 2 between 2 and {2 ** len(widths)}, got {token_stride}")
        self.laterals = nn.ModuleList(nn.Conv2d(w, out_dim, 1) for w in widths[::-1][:num_maps])
        self.head = nn.Sequential(
            nn.Conv2d(out_dim, out_dim, 3, 1, 1, bias=False),
            nn.GroupNorm(num_groups(out_dim), out_dim),
            nn.ReLU(True),
            nn.Conv2d(out_dim, out_dim, 1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: the encoder maps, finest first -> token map (B, out_dim, H / stride, W / stride)."""
        coarse_to_fine = features[::-1]
        x = self.laterals[0](coarse_to_fine[0])
        for lateral, skip in zip(self.laterals[1:], coarse_to_fine[1:]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + lateral(skip)
        return self.head(x)


def token_centres(height: int, width: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """Input-image pixel (u, v) of the centre of each token of an (height, width) map, row-major: (height*width, 2).

    Token (i, j) covers input pixels [stride*j, stride*(j+1)) x [stride*i, stride*(i+1)).
    """
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(-1, 2).float() * stride + (stride - 1) / 2
