"""The KPConv encoder over its sparse kernel influences equals the dense formulation it replaced (reference
functions below: every neighbour times every kernel point, one matmul of augmented vectors for the distances)."""

import numpy as np
import pytest
import torch

from i2preg.config import deep_update
from i2preg.data.collate import build_pyramid
from i2preg.model.icl import ICL
from i2preg.model.layers import gather
from i2preg.model.point_encoder import KPConv, KPConvEncoder, max_pool

CONF = deep_update(ICL.default_conf["point_encoder"], {
    "widths": (8, 16, 32, 32), "voxel_size": 0.3, "subsample_sizes": (512, 128, 32), "num_neighbors": 8,
})


def dense_influence(offsets, kernel_points, sigma):
    """(B, M, k, 3) offsets in voxels -> (B, M, k, K) influences, zeros included."""
    offsets, kernel_points = offsets / sigma, kernel_points / sigma
    ones = torch.ones_like(offsets[..., :1])
    lhs = torch.cat([offsets, offsets.square().sum(-1, keepdim=True), ones], dim=-1)
    rhs = torch.cat([-2 * kernel_points, ones.new_ones(len(kernel_points), 1),
                     kernel_points.square().sum(-1, keepdim=True)], -1)
    return (1 - (lhs @ rhs.T).clamp_min(0).sqrt()).relu()


def dense_conv(conv, feats, neighbors, influence):
    return (influence.transpose(-1, -2) @ gather(feats, neighbors)).flatten(2) @ conv.weight


def dense_encoder(encoder, batch):
    """KPConvEncoder.forward with dense influences and convolutions."""
    xyz, neighbors, pools = batch["pyramid_xyz"], batch["pyramid_neighbors"], batch["pyramid_pools"]

    def influence(query, support, index, level):
        offsets = (gather(support, index) - query[:, :, None]) / (encoder.voxel_size * 2**level)
        return dense_influence(offsets, encoder.kernel_points, encoder.sigma)

    def block(module, feats, index, h, strided=False):
        x = module.conv_norm(dense_conv(module.conv, module.reduce(feats), index, h))
        skip = gather(feats, index).amax(dim=2) if strided else feats
        return torch.nn.functional.leaky_relu(module.expand(x) + module.shortcut(skip), 0.1)

    x = encoder.stem_norm(dense_conv(encoder.stem, torch.ones_like(xyz[0][..., :1]), neighbors[0],
                                     h := influence(xyz[0], xyz[0], neighbors[0], 0)))
    skips = []
    for level, module in enumerate(encoder.blocks):
        if level > 0:
            x = block(encoder.downs[level - 1], x, pools[level - 1],
                      influence(xyz[level], xyz[level - 1], pools[level - 1], level - 1), strided=True)
            h = influence(xyz[level], xyz[level], neighbors[level], level)
        x = block(module, x, neighbors[level], h)
        skips.append(x)
    for up, level in zip(encoder.ups, range(len(encoder.blocks) - 1, encoder.coarse_level, -1)):
        x = up(torch.cat([gather(x, batch["pyramid_upsamples"][level - 1]), skips[level - 1]], dim=-1))
    return x


def cloud_batch(seed=0, batch_size=2, num_points=2048):
    """The point pyramid of ``batch_size`` random clouds (uniform in a 16 x 2 x 16 m box), batched."""
    rng = np.random.default_rng(seed)
    pyramids = [
        build_pyramid(rng.uniform([-8, -1, -8], [8, 1, 8], (num_points, 3)), CONF["voxel_size"],
                      CONF["subsample_sizes"], CONF["num_neighbors"])
        for _ in range(batch_size)
    ]
    return {key: [torch.from_numpy(np.stack(level)) for level in zip(*(p[key] for p in pyramids))]
            for key in pyramids[0]}


def test_sparse_influence_holds_every_nonzero_dense_influence():
    batch = cloud_batch()
    encoder = KPConvEncoder(CONF)
    xyz, index = batch["pyramid_xyz"], batch["pyramid_pools"][0]
    influence = encoder.influence(xyz[1], xyz[0], index, 0)
    offsets = (gather(xyz[0], index) - xyz[1][:, :, None]) / encoder.voxel_size
    dense = dense_influence(offsets, encoder.kernel_points, encoder.sigma)  # (B, M, k, K)
    B, M, k, K = dense.shape
    assert 0.02 < (dense > 0).float().mean() < 0.9  # a test with both zeros and nonzeros
    kernel = torch.repeat_interleave(torch.arange(K), torch.tensor(influence.counts))
    # rebuild the dense tensor from the entries: query row -> (b, m); support row -> its neighbour slot
    rebuilt = torch.zeros(B * M, K, xyz[0].shape[1])
    rebuilt[influence.query, kernel, influence.support.index % xyz[0].shape[1]] = influence.weight
    expected = torch.zeros(B * M, K, xyz[0].shape[1])
    slots = index.reshape(B * M, k)
    for slot in range(k):  # kNN neighbours are distinct, so each (query, support) pair has one slot
        expected[torch.arange(B * M), :, slots[:, slot]] = dense.reshape(B * M, k, K)[:, slot]
    assert torch.equal(influence.query // M, influence.support.index // xyz[0].shape[1])  # same sample
    torch.testing.assert_close(rebuilt, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_output_and_gradients_equal_the_dense_formulation(seed):
    torch.manual_seed(seed)
    batch = cloud_batch(seed)
    encoder = KPConvEncoder(CONF)
    coarse_xyz, sparse = encoder(batch)
    dense = dense_encoder(encoder, batch)
    assert coarse_xyz is batch["pyramid_xyz"][CONF["coarse_level"]]
    torch.testing.assert_close(sparse, dense, atol=1e-4, rtol=1e-4)
    target = torch.randn_like(dense)
    sparse_grads = torch.autograd.grad((sparse * target).sum(), list(encoder.parameters()))
    dense_grads = torch.autograd.grad((dense * target).sum(), list(encoder.parameters()))
    for name, a, b in zip([n for n, _ in encoder.named_parameters()], sparse_grads, dense_grads):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=name)


@pytest.mark.parametrize("in_dim, out_dim", [(2, 8), (8, 8)])  # summed per slot first / messages per entry
def test_kpconv_output_and_input_gradient_equal_the_dense_convolution(in_dim, out_dim):
    torch.manual_seed(0)
    batch = cloud_batch()
    encoder = KPConvEncoder(CONF)
    xyz, index = batch["pyramid_xyz"][0], batch["pyramid_neighbors"][0]
    offsets = (gather(xyz, index) - xyz[:, :, None]) / encoder.voxel_size
    conv = KPConv(in_dim, out_dim, len(encoder.kernel_points))
    feats = torch.randn(*xyz.shape[:2], in_dim, requires_grad=True)
    sparse = conv(feats, encoder.influence(xyz, xyz, index, 0))
    dense = dense_conv(conv, feats, index, dense_influence(offsets, encoder.kernel_points, encoder.sigma))
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    target = torch.randn_like(dense)
    sparse_grads = torch.autograd.grad((sparse * target).sum(), [feats, conv.weight])
    dense_grads = torch.autograd.grad((dense * target).sum(), [feats, conv.weight])
    for a, b in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_max_pool_gives_the_same_values_with_and_without_a_gradient_which_reaches_each_maximum():
    torch.manual_seed(0)
    feats = torch.randn(2, 40, 6)
    neighbors = torch.randint(0, 40, (2, 10, 5))
    with torch.no_grad():
        without_gradient = max_pool(feats, neighbors)
    leaf = feats.clone().requires_grad_()
    pooled = max_pool(leaf, neighbors)
    pooled.sum().backward()
    assert torch.equal(pooled, without_gradient)
    assert torch.equal(without_gradient, gather(feats, neighbors).max(dim=2).values)
    expected = torch.zeros_like(feats)  # one count per (query, channel), at the row holding its maximum
    for b, m, c in np.ndindex(2, 10, 6):
        expected[b, neighbors[b, m, gather(feats, neighbors)[b, m, :, c].argmax()], c] += 1
    assert torch.equal(leaf.grad, expected)
