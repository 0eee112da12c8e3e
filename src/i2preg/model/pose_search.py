"""The pose search: GPDM's frustum-pose head for the 3-DoF protocol (beyond the paper; ``model.gpdm.yaw_bins``).

The paper's GPDM regresses the frustum pose from a global image vector and the point features. The pose
search keeps the regressed camera centre and scores pose hypotheses about it instead: each hypothesis
(centre, yaw) projects the coarse points into the image, and its logit says how well the points' features fit
the image features where they land. ``GPDM`` uses it when ``yaw_bins`` > 0 and the model has 3 DoF; with
``yaw_bins: 0``, and always with 6 DoF, GPDM has the paper's regression head (docs/TRAINING.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..geometry import frustum_params_to_pose, project_frustum_params, project_points, transform_points, view_weight
from .layers import RowIndex, bilinear_rows, gather, gather_rows, mlp


def yaw_bin_vectors(num_bins: int, device=None) -> torch.Tensor:
    """(num_bins, 2) the d = (-sin yaw, cos yaw) of yaws 2 pi k / num_bins."""
    return yaw_vectors(torch.arange(num_bins, device=device) * (2 * math.pi / num_bins))


def yaw_vectors(yaw: torch.Tensor) -> torch.Tensor:
    """Yaws (...) in radians -> d = (-sin yaw, cos yaw) (..., 2)."""
    return torch.stack([-yaw.sin(), yaw.cos()], dim=-1)


def vector_yaws(d: torch.Tensor) -> torch.Tensor:
    """d (..., 2) -> yaws (...) in radians, the inverse of ``yaw_vectors``."""
    return torch.atan2(-d[..., 0], d[..., 1])


def add_bilinear_samples(rows: torch.Tensor, image: torch.Tensor, sample: torch.Tensor, uv: torch.Tensor,
                         image_size: tuple[int, int]) -> torch.Tensor:
    """rows (E, C) += the bilinear features at E points of differing samples, in place (and returned): image (B, C,
    h, w) feature maps of (H, W) = image_size input images, sample (E,) each point's sample, uv (E, 2) its
    input-image pixels, within (-0.5, W - 0.5) x (-0.5, H - 0.5) (the points in view: ``view_weight`` > 0); zero
    beyond a map's border pixels (``F.grid_sample``'s bilinear sampling, align_corners False, zero padding).

    Each map is framed by a row and a column of zeros and the maps are flattened to one table of (B (h + 2) (w + 2),
    C) pixel rows; a point's feature is the weighted sum of its four corner rows (``layers.bilinear_rows``). The same
    values up to float rounding as grid_sample's (the weights come from the pixel coordinates, not grid_sample's
    normalised ones)."""
    B, C, h, w = image.shape
    H, W = image_size
    table = F.pad(image, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, C)  # (B (h + 2) (w + 2), C)
    x = (uv[:, 0] + 0.5) * (w / W) + 0.5  # framed-map coordinates, pixel centres at integers + 1
    y = (uv[:, 1] + 0.5) * (h / H) + 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    gx, gy = 1 - fx, 1 - fy
    corner = (sample * (h + 2) + y0.long()) * (w + 2) + x0.long()
    corners = corner[:, None] + torch.tensor([0, 1, w + 2, w + 3], device=corner.device)  # (E, 4)
    weights = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], dim=1)  # (E, 4)
    return rows.add_(bilinear_rows(table, corners, weights))


VIEW_TIE_BREAK = 40503
"""An odd multiplier: index * VIEW_TIE_BREAK mod 65,536 orders the points of one band of ``points_near_view``
(a permutation of 0..65,535, so no two points below 65,536 tie; spread over the cloud's index order)."""

VIEW_BANDS = 64
"""``points_near_view`` ranks the points by bands of 1 / VIEW_BANDS of the image's width and height outside it."""


def points_near_view(xyz, centre, rotation, K, image_size, count: int) -> torch.Tensor:
    """Indices (B, count) of the points of xyz (B, M, 3) nearest the image of the 3-DoF pose (centre (B, 2), rotation
    (B, 2)) with intrinsics K (B, 3, 3) of the (H, W) = image_size image: ranked by how far outside the image they
    project, in bands of 1 / ``VIEW_BANDS`` of its width and height (the points in view in the first), points behind
    the camera last; within a band by a fixed scramble of their index (``VIEW_TIE_BREAK``).

    Which points are kept must not hang on rounding: neither on the top-k's tie order, which differs between PyTorch
    and ONNX Runtime, nor on a distance that a rounding error moves past the next point's (a point moves to another
    band only when it crosses a band's edge)."""
    H, W = image_size
    uv, depth = project_points(transform_points(frustum_params_to_pose(centre, rotation), xyz), K)
    u, v = uv.unbind(-1)
    outside = (F.relu(-u) + F.relu(u - W)) / W + (F.relu(-v) + F.relu(v - H)) / H
    scramble = torch.arange(xyz.shape[1], device=xyz.device) * VIEW_TIE_BREAK % 65536  # distinct below 65,536 points
    outside = (outside * VIEW_BANDS).floor() + scramble.to(outside.dtype) / 65536
    outside = outside.masked_fill(depth < 0.1, float("inf"))
    return outside.topk(count, dim=1, largest=False).indices


RESIDUAL_BLOCK_ROWS = 8192
"""Rows a block of ``HypothesisScorer.deepen``: a (8192, 64) float32 hidden layer is 2 MiB."""


def residual_blocks_(features: torch.Tensor, layers, inputs: torch.Tensor | None = None,
                     hidden: torch.Tensor | None = None):
    """``HypothesisScorer.residual_rows`` without autograd, block by block into features (E, dim) itself: each layer
    (first weight (2 dim, dim), first bias, last weight (dim, 2 dim), last bias) adds last(relu(first(x))) to x. A
    block's hidden layer and residual go to buffers that stay in the cache, so that no block allocates and no
    concatenation copies the rows again (the arithmetic of ``residual_rows``, bit for bit). With inputs (L - 1, E,
    dim) and hidden (L, E, 2 dim) it keeps there the input of every layer but the first and every hidden layer (after
    its ReLU), for ``ResidualRows``'s backward pass. Returns features."""
    width = layers[0][0].shape[0]
    block_hidden = features.new_empty(RESIDUAL_BLOCK_ROWS, width)
    residual = features.new_empty(RESIDUAL_BLOCK_ROWS, features.shape[1])
    for start, block in zip(range(0, len(features), RESIDUAL_BLOCK_ROWS), features.split(RESIDUAL_BLOCK_ROWS)):
        rows = slice(start, start + len(block))
        for layer, (first_weight, first_bias, last_weight, last_bias) in enumerate(layers):
            if inputs is not None and layer > 0:
                inputs[layer - 1, rows] = block
            h = block_hidden[: len(block)] if hidden is None else hidden[layer, rows]
            torch.addmm(first_bias, block, first_weight.T, out=h).relu_()
            block += torch.addmm(last_bias, h, last_weight.T, out=residual[: len(block)])
    return features


def residual_layers(parameters) -> list:
    """``ResidualRows``'s flat parameters -> (first weight, first bias, last weight, last bias) a layer."""
    return [parameters[i:i + 4] for i in range(0, len(parameters), 4)]


class ResidualRows(torch.autograd.Function):
    """``HypothesisScorer.residual_rows`` on features (E, dim) and the layers' parameters (first weight, first bias,
    last weight, last bias for each layer, flat), forward and backward block by block (``residual_blocks_``): the
    backward pass runs each block through the layers in reverse with its gradients in the cache, accumulates the
    parameters' gradients over the blocks and writes the features' gradient in place, where autograd on the blocks
    concatenated their outputs and split their gradients again (the bundled model's stage-2 training step 1.06 times
    faster on 2 cores). The same gradients up to the order of their float sums."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, *parameters: torch.Tensor) -> torch.Tensor:
        layers = residual_layers(parameters)
        inputs = features.new_empty(len(layers) - 1, *features.shape)
        hidden = features.new_empty(len(layers), len(features), layers[0][0].shape[0])
        out = residual_blocks_(features.clone(), layers, inputs, hidden)
        ctx.save_for_backward(features, inputs, hidden, *parameters)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        features, inputs, hidden, *parameters = ctx.saved_tensors
        layers = residual_layers(parameters)
        grads = [torch.zeros_like(parameter) for parameter in parameters]
        grad_features = grad.clone()  # the rows' gradient, taken back through the layers block by block in place
        grad_hidden = grad.new_empty(RESIDUAL_BLOCK_ROWS, hidden.shape[-1])
        for start, g in zip(range(0, len(grad), RESIDUAL_BLOCK_ROWS), grad_features.split(RESIDUAL_BLOCK_ROWS)):
            rows = slice(start, start + len(g))
            for layer in reversed(range(len(layers))):
                first_weight, _, last_weight, _ = layers[layer]
                grad_first_weight, grad_first_bias, grad_last_weight, grad_last_bias = grads[4 * layer:4 * layer + 4]
                h = hidden[layer, rows]
                x = features[rows] if layer == 0 else inputs[layer - 1, rows]
                grad_last_weight.addmm_(g.T, h)
                grad_last_bias += g.sum(0)
                gh = torch.ops.aten.threshold_backward(torch.mm(g, last_weight, out=grad_hidden[: len(g)]), h, 0)
                grad_first_weight.addmm_(gh.T, x)
                grad_first_bias += gh.sum(0)
                g.addmm_(gh, first_weight)
        return grad_features, *grads


class HypothesisScorer(nn.Module):
    """The logit of a 3-DoF pose hypothesis (camera centre, yaw): it projects the points into the image, every point
    in view scores how well its feature, its height and its depth fit the image feature where it lands (an MLP on
    the sum of their projections to ``dim``), and the logit is the mean score of its points in view. Shared by the
    pose search and the fine search (``fine_search.FineSearch``). ``residual_layers`` (dim -> 2 dim -> dim MLPs, each
    added to the hidden feature before the last linear layer) deepen that MLP; zero-initialised, they start as the
    score without them."""

    def __init__(self, image_dim: int, point_dim: int, dim: int, residual_layers: int = 0):
        super().__init__()
        self.image_proj = nn.Conv2d(image_dim, dim, 1)
        self.point_proj = nn.Linear(point_dim, dim)
        self.geometry_proj = mlp([2, dim, dim])
        self.residuals = nn.ModuleList(mlp([dim, 2 * dim, dim]) for _ in range(residual_layers))
        for residual in self.residuals:  # zero-initialised: the score starts as without them
            nn.init.zeros_(residual[-1].weight)
            nn.init.zeros_(residual[-1].bias)
        self.score = nn.Linear(dim, 1)

    def deepen(self, features: torch.Tensor) -> torch.Tensor:
        """features (E, dim) -> (E, dim) through the residual layers, on blocks of RESIDUAL_BLOCK_ROWS rows whose
        (rows, 2 dim) hidden layer stays in the CPU's cache: the fine search scores about 110,000 rows a pair, and on
        the whole of them at once each layer streamed its hidden layer through memory (on 2 cores the forward 1.2
        times and forward + backward 1.5-1.7 times slower). The same values either way, up to float rounding; the
        exported graph takes the whole rows (its row count is dynamic). Without gradients (inference) it writes the
        result into features itself; with them, ``ResidualRows`` keeps what its backward pass needs."""
        if not self.residuals:
            return features
        if torch.onnx.is_in_onnx_export():
            return self.residual_rows(features)
        layers = [(first.weight, first.bias, last.weight, last.bias) for first, _, last in self.residuals]
        if not torch.is_grad_enabled():
            return residual_blocks_(features, layers)
        return ResidualRows.apply(features, *(parameter for layer in layers for parameter in layer))

    def residual_rows(self, features: torch.Tensor) -> torch.Tensor:
        """features (rows, dim) -> (rows, dim): each residual layer's output added to its input."""
        for residual in self.residuals:
            features = features + residual(features)
        return features

    def hypothesis_logits(self, image, points, xyz, heights, centres, rotations, K, image_size) -> torch.Tensor:
        """image (B, dim, h, w) and points (B, M, dim) projected features; xyz (B, M, 3) and heights (B, M) (the
        points' ``geometry.ground_heights``, the height the score reads); centres (B, Hy, 2) and
        rotations (B, Hy, 2) the hypotheses -> logits (B, Hy): the mean score of each one's points in view, each
        weighted by ``geometry.view_weight`` (fading in over the pixel inside the border; divided by the weights'
        sum, at least 1, so 0 for a hypothesis that sees none). Only the (hypothesis, point) pairs in view are
        scored. In float32 under autocast (mixed precision), which does not reach its in-place sums."""
        device = image.device.type
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self.hypothesis_logits(image.float(), points.float(), xyz, heights, centres, rotations, K,
                                              image_size)
        (B, M), Hy = xyz.shape[:2], centres.shape[1]
        H, W = image_size
        uv, depth = project_frustum_params(xyz, centres, rotations, K)  # (B, Hy, M, 2), (B, Hy, M)
        weight = view_weight(uv.detach(), depth.detach(), H, W)  # a count, no path for gradients
        seen = weight.flatten().nonzero()[:, 0]  # (E,) flat (b, hypothesis, point) in view, sorted by sample
        uv, depth = uv.reshape(-1, 2)[seen], depth.flatten()[seen]
        point = RowIndex(seen // (Hy * M) * M + seen % M, B * M)  # rows of points.flatten(0, 1)
        geometry = torch.stack([heights.flatten()[point.index] / 2, depth.clamp_min(0.5).log()], dim=-1)
        # relu(point + geometry_proj(geometry) + sampled image feature), summed in place into the gathered rows: the
        # geometry MLP's last bias joins the M point rows before the gather and its matmul accumulates into the E rows;
        # its hidden ReLU in place (the Linear's (E, dim) output is no view, and its backward needs only its input)
        first, last = self.geometry_proj[0], self.geometry_proj[-1]
        hidden = first(geometry).relu_()
        features = gather_rows((points + last.bias).flatten(0, 1), point).addmm_(hidden, last.weight.T)  # (E, dim)
        add_bilinear_samples(features, image, seen // (Hy * M), uv, image_size)
        features = self.deepen(features.relu_())
        scores = self.score(features)[:, 0] * weight.flatten()[seen]
        sums = scores.new_zeros(B * Hy).index_add(0, seen // M, scores).view(B, Hy)
        return sums / weight.sum(-1).clamp_min(1)


def restrict_to_prior(yaw_logits: torch.Tensor, bin_yaws: torch.Tensor, yaw_prior: torch.Tensor) -> torch.Tensor:
    """yaw_logits (B, N) of the bins at bin_yaws (B, N) (rad) with -inf for the bins farther than the tolerance
    from the prior's yaw, yaw_prior (B, 2) = (yaw, tolerance) in radians; the bin nearest the prior's yaw always
    stays in."""
    offset = torch.remainder(bin_yaws - yaw_prior[:, :1] + math.pi, 2 * math.pi) - math.pi
    distance = offset.abs()
    outside = (distance > yaw_prior[:, 1:]) & (distance > distance.min(dim=-1, keepdim=True).values)
    return yaw_logits.masked_fill(outside, float("-inf"))


class PoseSearch(HypothesisScorer):
    """Frustum pose by scoring pose hypotheses (beyond the paper, for the 3-DoF protocol; ``gpdm.yaw_bins``).

    A hypothesis (camera centre, yaw) projects the coarse points into the image; every point in view scores
    how well its feature, its height and its depth fit the image feature where it lands (an MLP on the sum
    of their projections), and the hypothesis logit is the mean score of its points in view. Two searches
    share that score: ``yaw_bins`` yaws about the regressed centre (the yaw: the probability-weighted mean
    direction of the ``yaw_window`` bins either side of the best), then, with ``refine_centre_step`` > 0,
    a grid of centre offsets (``refine_radius`` steps either way in x and z) times yaw offsets (as many steps
    of ``refine_yaw_step_deg``) about that estimate (the pose: see ``refine``), ``refine_iterations`` times,
    each grid ``refine_shrink`` times the last; with ``refine_points`` > 0 a grid scores only that many
    coarse points, those nearest the view of its centre pose (the grid's small offsets leave the rest out of
    view; this cuts its cost about threefold). This correlates pixels with points directly, where the
    paper's head must learn the yaw from a global image vector, which a 2-core CPU does not manage in hours
    (docs/TRAINING.md).
    """

    def __init__(self, image_dim: int, point_dim: int, conf: dict):
        super().__init__(image_dim, point_dim, conf["yaw_search_dim"])
        self.num_bins, self.window = conf["yaw_bins"], conf["yaw_window"]
        self.centre_step, self.radius = conf["refine_centre_step"], conf["refine_radius"]
        self.yaw_step = math.radians(conf["refine_yaw_step_deg"])
        self.iterations, self.shrink = conf["refine_iterations"], conf["refine_shrink"]
        self.refine_points = conf["refine_points"]

    def forward(self, image_map, point_feats, xyz, heights, centre, K, image_size, yaw_prior=None
                ) -> dict[str, torch.Tensor]:
        """image_map (B, Ci, h, w); point_feats (B, M, Cp); xyz (B, M, 3) cloud frame and heights (B, M) (their
        ``geometry.ground_heights``); centre (B, 2) the regressed camera centre (c_x, c_z), cloud frame; K (B, 3, 3)
        of the (H, W) input image; yaw_prior (B, 2) or None: a yaw (rad, ``vector_yaws``) and a tolerance (rad) per
        sample: the best yaw bin is chosen among those within the tolerance of that yaw (``restrict_to_prior``), the
        weighted mean about it as without one.

        Returns centre (B, 2) and rotation (B, 2) (d, unnormalised): the estimate; yaw_logits (B, yaw_bins);
        with the refinement also, over its I iterations and R = (2 radius + 1)^3 hypotheses each, refine_logits
        (B, I, R), refine_centres (B, I, R, 2), refine_rotations (B, I, R, 2) (unit d), and refine_steps (B, I, 2):
        centre step (m), yaw step (rad).
        """
        B = xyz.shape[0]
        image, points = self.image_proj(image_map), self.point_proj(point_feats)
        bins = yaw_bin_vectors(self.num_bins, xyz.device).to(xyz.dtype).expand(B, -1, -1)
        yaw_logits = self.hypothesis_logits(image, points, xyz, heights, centre[:, None].expand_as(bins), bins, K,
                                            image_size)
        # a prior decides only which bin is best; its neighbours weigh in as without one, so that where the best
        # bin lies within the tolerance the pose is the same
        allowed = yaw_logits if yaw_prior is None else restrict_to_prior(yaw_logits, vector_yaws(bins), yaw_prior)
        offsets = torch.arange(-self.window, self.window + 1, device=xyz.device)
        neighbours = (allowed.argmax(dim=-1, keepdim=True) + offsets) % self.num_bins  # (B, 2 window + 1)
        weights = yaw_logits.gather(1, neighbours).softmax(dim=-1)
        rotation = (weights[..., None] * bins.gather(1, neighbours[..., None].expand(-1, -1, 2))).sum(dim=1)
        out = {"centre": centre, "rotation": rotation, "yaw_logits": yaw_logits}
        if self.centre_step > 0:
            refinements = []
            for i in range(self.iterations):
                refinements.append(self.refine(image, points, xyz, heights, centre, rotation, K, image_size,
                                               self.shrink**i))
                centre, rotation = refinements[-1][:2]
            centre, rotation, logits, centres, rotations, steps = zip(*refinements)
            out.update(centre=centre[-1], rotation=rotation[-1], refine_logits=torch.stack(logits, 1),
                       refine_centres=torch.stack(centres, 1), refine_rotations=torch.stack(rotations, 1),
                       refine_steps=torch.stack(steps).expand(B, -1, -1))
        return out

    def refine(self, image, points, xyz, heights, centre, rotation, K, image_size, scale: float):
        """One refinement about (centre, rotation), its grid steps times ``scale``: the new centre (the mean over
        the whole grid: where the logits cannot tell centres apart it stays put) and rotation (the mean over the
        best hypothesis and its neighbours: sharp in yaw), the logits (B, R), hypotheses centres and rotations
        (B, R, 2), and the steps (2,) (metres, radians)."""
        centre, rotation = centre.detach(), rotation.detach()
        if 0 < self.refine_points < xyz.shape[1]:
            index = points_near_view(xyz, centre, rotation, K, image_size, self.refine_points)
            xyz, heights, points = gather(xyz, index), heights.gather(1, index), gather(points, index)
        centres, rotations = self.refinement_grid(centre, vector_yaws(rotation), scale)
        logits = self.hypothesis_logits(image, points, xyz, heights, centres, rotations, K, image_size)
        weights, index = self.grid_window(logits)
        rotation = (weights[..., None] * rotations.gather(1, index[..., None].expand(-1, -1, 2))).sum(1)
        centre = (logits.softmax(dim=-1)[..., None] * centres).sum(1)
        steps = torch.tensor([self.centre_step * scale, self.yaw_step * scale], device=xyz.device)
        return centre, rotation, logits, centres, rotations, steps

    def refinement_grid(self, centre: torch.Tensor, yaw: torch.Tensor, scale: float = 1.0):
        """Hypotheses about centre (B, 2) and yaw (B,): centres (B, R, 2) and unit rotations (B, R, 2), ordered
        (x offset, z offset, yaw offset), each offset in -radius..radius steps (times ``scale``)."""
        steps = torch.arange(-self.radius, self.radius + 1, device=centre.device, dtype=centre.dtype) * scale
        dx, dz, dyaw = torch.meshgrid(steps * self.centre_step, steps * self.centre_step, steps * self.yaw_step,
                                      indexing="ij")
        centres = centre[:, None] + torch.stack([dx, dz], dim=-1).reshape(1, -1, 2)
        return centres, yaw_vectors(yaw[:, None] + dyaw.reshape(1, -1))

    def grid_window(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax weights (B, 27) and flat indices (B, 27) of the best refinement hypothesis and its grid
        neighbours (weight 0 for a neighbour outside the grid)."""
        size = 2 * self.radius + 1
        best = logits.argmax(dim=-1)
        best = torch.stack([best // size**2, best // size % size, best % size], dim=-1)  # (B, 3)
        offsets = torch.cartesian_prod(*[torch.arange(-1, 2, device=logits.device)] * 3)  # (27, 3)
        cells = best[:, None] + offsets
        inside = ((cells >= 0) & (cells < size)).all(dim=-1)
        cells = cells.clamp(0, size - 1)
        index = (cells[..., 0] * size + cells[..., 1]) * size + cells[..., 2]
        weights = logits.gather(1, index).masked_fill(~inside, float("-inf")).softmax(dim=-1)
        return weights, index
