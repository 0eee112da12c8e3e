"""The ICL model: GPDM -> ICLM -> PRM (METHOD section 2), configured LightGlue-style from ``ICL.default_conf``.

Training stages: stage 1 trains the GPDM set (``gpdm_parameters``: image encoder, point encoder, GPDM heads)
with L_cls + L_fru; stage 2 freezes it (``freeze_gpdm``; ``train.stage2_trains_gpdm`` trains it on) and trains the
rest (image decoder to the pixel tokens, fine search, ICLM, PRM; with ``iclm.own_encoders``, ICLM's own encoders too).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..config import deep_update
from ..geometry import frustum_params_to_pose, ground_heights, transform_points
from .fine_search import FineSearch
from .gpdm import GPDM
from .iclm import ICLM
from .image_encoder import ImageDecoder, build_image_encoder
from .point_encoder import KPConvEncoder
from .prm import PRM


def repeat_draws(features: torch.Tensor, batch: dict) -> torch.Tensor:
    """Features (P, ...) of each of a batch's P images -> (P x D, ...), one row for each of its D point draws
    (``batch["draws"]``, ``data.collate``; D = 1 without it)."""
    draws = batch.get("draws", 1)
    return features if draws == 1 else features.repeat_interleave(draws, dim=0)


class ICL(nn.Module):
    default_conf = {
        "dof": 3,  # 3: yaw + planar translation (the benchmark protocol); 6: general pose
        # The pose and fine searches' scores read each point's height over the cloud's ground plane (batch["ground"],
        # data.collate), placed as if that ground lay level at this y of the cloud frame (y down; the training rig's
        # camera height, so that a level training cloud's heights are its y): a camera that leans against the road
        # leans its cloud's frame, which then moves a point 20 m ahead by 0.35 m a degree (geometry.ground_heights)
        "ground_y": 1.65,
        "detach_prm_inputs": True,  # the reference code: no PRM gradient into ICLM
        "image_encoder": {
            "backbone": "scratch",  # image_encoder.BACKBONES: "scratch" or the pretrained "efficientnet-lite0"
            "widths": (128, 256, 512),  # strides 2, 4, 8 (scratch; the pretrained backbone has its own)
            "frozen_maps": 0,  # efficientnet-lite0: its stem and blocks up to this many maps are not trained
            "token_stride": 4,  # pixel tokens from the decoder at this stride (2, 4 or 8)
            "token_dim": 128,
        },
        "point_encoder": {
            "widths": (64, 128, 256, 512),  # one entry per pyramid level
            "voxel_size": 0.15,  # level l voxel: voxel_size * 2**l; levels >= 1 are voxel-grid subsampled
            "subsample_sizes": (10240, 2560, 640),  # fixed point counts of levels 1.. (level 0: the input)
            "num_neighbors": 16,  # k of the kNN neighbourhoods
            "coarse_level": 2,  # the decoder stops here: these are the coarse points / point tokens
            "num_kernel_points": 15,
            "kernel_radius": 2.5,  # in voxels
            "kernel_sigma": 1.2,  # kernel point influence extent, in voxels
            "use_intensity": False,  # input feature: constant 1 (+ intensity)
        },
        "gpdm": {
            "hidden_dim": 128,
            "fallback_topk": 16,
            "mask_source": "geometric",  # ICLM's point mask: "geometric" (frustum pose) or "classifier" (cls_logits > 0)
            # The frustum pose head of 3 DoF: the pose search (pose_search.PoseSearch, beyond the paper) scores
            # yaw_bins yaw hypotheses about the regressed centre; yaw_bins 0 is the paper's regression head, which
            # 6 DoF always has.
            "yaw_bins": 36,
            "yaw_search_dim": 32,
            "yaw_window": 2,  # bins either side of the best one in the yaw's weighted mean
            "refine_centre_step": 0.75,  # > 0: then search a grid of centre (metres) x yaw offsets about that pose
            "refine_yaw_step_deg": 2.5,
            "refine_radius": 2,  # grid steps either way: (2 radius + 1)^3 hypotheses
            "refine_iterations": 2,  # refinements in a row, each about the last one's pose
            "refine_shrink": 0.5,  # each further grid's steps: this times the last one's
            "refine_points": 0,  # > 0: a grid scores only this many coarse points, those nearest its view
        },
        "iclm": {"dim": 128, "num_queries": 64, "num_iterations": 3, "num_heads": 4,
                 "anchor_sigma": 0.0,  # > 0: anchored queries (iclm.py; beyond the paper)
                 # coarse to fine (iclm.py; the reference code's ICL++): the global stage's stride (0: the token
                 # stride), a window stage per [stride, radius_px] ([] is the paper's single scale), the first
                 # window about the previous 2D keypoint ("keypoint") or the 3D keypoint's projection by the prior
                 # pose ("frustum": GPDM's frustum pose, or the fine search's; ``forward``)
                 "global_stride": 0, "windows": [], "window_centre": "keypoint",
                 # True: ICLM reads its own image encoder + decoder and point encoder (``ICLMEncoders``; the paper's and
                 # the reference code's), randomly initialised and trained in stage 2, instead of GPDM's frozen
                 # encoders through the image decoder
                 "own_encoders": False},
        # The fine search (fine_search.py; beyond the paper; 3 DoF): num_points > 0 of pyramid level ``level``
        # nearest the view score a grid of (lateral m, forward m, yaw deg) ``steps`` x ``radii`` steps either way
        # about GPDM's frustum pose, ``iterations`` times; its first grid jittered by +-train_jitter (m, deg) in
        # training; before them, a wide grid of (lateral m, yaw deg) wide_steps x wide_radii, its logits less
        # wide_penalty per degree of yaw offset (radii [0, 0]: none); residual_layers zero-initialised residual MLPs
        # in its per-point score (``pose_search.HypothesisScorer``; the bundled model has two, docs/METHOD.md). It
        # gives fine_pose (inference.SOLVERS: "fine"), about which ICLM and PRM then work
        "fine": {"num_points": 0, "level": 1, "dim": 32, "steps": [0.15, 0.3, 0.6], "radii": [4, 1, 2],
                 "iterations": 2, "train_jitter": [0.3, 0.75],
                 "wide_steps": [0.3, 1.5], "wide_radii": [2, 6], "wide_penalty": 0.5, "residual_layers": 0},
        "prm": {"dim": 128,
                "reprojection_residual": False},  # True: each query's reprojection residual as input (prm.py; beyond the paper)
    }

    def __init__(self, conf: dict | None = None):
        super().__init__()
        self.conf = conf = deep_update(self.default_conf, conf or {})
        self.token_stride = conf["image_encoder"]["token_stride"]
        self.image_encoder = build_image_encoder(conf["image_encoder"])
        image_widths = self.image_encoder.widths
        self.point_encoder = KPConvEncoder(conf["point_encoder"])
        self.gpdm = GPDM(image_widths[-1], self.point_encoder.out_dim, conf["gpdm"], conf["dof"])
        token_dim = conf["image_encoder"]["token_dim"]
        self.image_decoder = ImageDecoder(image_widths, token_dim, self.token_stride)
        self.iclm = ICLM(token_dim, self.point_encoder.out_dim, conf["iclm"])
        self.prm = PRM(conf["iclm"]["dim"], conf["prm"], conf["dof"])
        self.fine = None
        if conf["fine"]["num_points"] > 0:
            if conf["dof"] != 3:
                raise ValueError("the fine search (model.fine.num_points > 0) needs the 3-DoF protocol (model.dof: 3)")
            level = conf["fine"]["level"]
            fine_dim = conf["point_encoder"]["widths"][level] + self.point_encoder.out_dim
            self.fine = FineSearch(token_dim, fine_dim, conf["fine"])
        self.iclm_encoders = ICLMEncoders(conf) if conf["iclm"]["own_encoders"] else None

    def gpdm_modules(self) -> list[nn.Module]:
        """The stage-1 modules: image encoder, point encoder, GPDM heads."""
        return [self.image_encoder, self.point_encoder, self.gpdm]

    def gpdm_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.gpdm_modules():
            yield from module.parameters()

    def freeze_gpdm(self, frozen: bool = True) -> None:
        """Stop (frozen) or let gradients into the GPDM set (requires_grad False or True): stage 2 freezes it."""
        for parameter in self.gpdm_parameters():
            parameter.requires_grad_(not frozen)

    def forward_gpdm(self, batch: dict) -> dict[str, torch.Tensor]:
        """Stage-1 forward: encoders and GPDM only (the keys of ``forward`` up to ``mask``)."""
        return self._encode_and_detect(batch)[0]

    def encode(self, batch: dict) -> tuple[list[torch.Tensor], tuple]:
        """The two encoders on a batch (``forward``'s): the image encoder's maps (each image once, without its point
        draws' rows) and the point encoder's (coarse_xyz, coarse_feats, skips). What ``forward`` computes from
        them depends on the batch's ``yaw_prior`` and ``centre_prior`` but they do not: runs that differ only in those
        can share them."""
        image = batch["image"]
        if image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(f"image height and width must be multiples of 8, got {tuple(image.shape[-2:])}")
        return self.image_encoder(image[:: batch.get("draws", 1)]), self.point_encoder(batch, levels=True)

    def forward(self, batch: dict, encoded: tuple | None = None) -> dict[str, torch.Tensor]:
        """batch: a ``data.collate.Collate`` batch (image (B, 3, H, W), K (B, 3, 3), the point pyramid...; with
        ``yaw_prior`` (B, 2), a yaw and a tolerance in radians, GPDM's pose search keeps to those yaws; with
        ``centre_prior`` (B, 2), a camera centre (c_x, c_z), cloud frame, it looks about that centre). encoded:
        ``encode(batch)`` when the caller has it already (None: computed here).

        Returns, with M coarse points, Nq queries and T pixel tokens:
        - GPDM: coarse_xyz (B, M, 3) cloud frame; cls_logits (B, M); frustum_centre, frustum_rotation (raw
          parameters: (B, 2) c and (B, 2) d for 3 DoF, (B, 3) centre and (B, 6) 6D for 6 DoF);
          frustum_pose (B, 4, 4); mask (B, M) bool, the points ICLM may attend to.
        - ICLM: kp_2d (B, Nq, 2) input-image pixels; kp_3d (B, Nq, 3) cloud frame; heatmap_2d (B, Nq, T) over
          the token centres heatmap_2d_uv; heatmap_3d (B, Nq, M); desc_2d, desc_3d (B, Nq, d); with coarse to
          fine windows also coarse_stages (``ICLM.forward``).
        - PRM: residual_rotation (B, 3, 3); residual_translation (B, 3); residual_rotation_params,
          residual_translation_params (raw head outputs); pose (B, 4, 4) cloud -> camera, the final estimate.
        - With the fine search (``model.fine.num_points`` > 0): fine_pose (B, 4, 4) cloud -> camera, GPDM's frustum
          pose refined, and the keys of ``FineSearch.forward``.
        - prior_pose (B, 4, 4): the pose ICLM and PRM work about (the frustum pose of the paper's ICLM and PRM; the
          fine pose with the fine search), detached.
        """
        out, (image_features, coarse_feats, skips) = self._encode_and_detect(batch, encoded)
        image_size = tuple(batch["image"].shape[-2:])
        token_map = repeat_draws(self.image_decoder(image_features), batch)
        if self.fine is not None:
            fine_xyz, fine_feats = self.point_encoder.fine_features(batch, self.conf["fine"]["level"], coarse_feats, skips)
            out.update(self.fine(token_map, fine_feats, fine_xyz, self.heights(batch, fine_xyz), out["frustum_centre"],
                                 out["frustum_rotation"], batch["K"], image_size))
            out["fine_pose"] = frustum_params_to_pose(out["fine_centre"], out["fine_rotation"])
        prior_pose = out.get("fine_pose", out["frustum_pose"]).detach()
        out["prior_pose"] = prior_pose
        xyz_frustum = transform_points(prior_pose, out["coarse_xyz"])
        iclm_tokens, iclm_points = (token_map, coarse_feats) if self.iclm_encoders is None else self.iclm_encoders(batch)
        out.update(
            self.iclm(
                iclm_tokens,
                image_size,
                iclm_points,
                out["coarse_xyz"],
                xyz_frustum,
                out["mask"],
                batch["K"],
            )
        )
        prm_inputs = [out["kp_2d"], out["kp_3d"], out["desc_2d"], out["desc_3d"]]
        if self.conf["detach_prm_inputs"]:
            prm_inputs = [x.detach() for x in prm_inputs]
        out.update(self.prm(*prm_inputs, batch["K"], prior_pose))
        return out

    def heights(self, batch: dict, xyz: torch.Tensor) -> torch.Tensor:
        """(B, M) the heights the searches' scores read of points xyz (B, M, 3) of the batch's clouds."""
        return ground_heights(xyz, batch["ground"], self.conf["ground_y"])

    def _encode_and_detect(self, batch: dict, encoded: tuple | None = None):
        image_features, (coarse_xyz, coarse_feats, skips) = encoded or self.encode(batch)
        out = self.gpdm(repeat_draws(image_features[-1], batch), coarse_feats, coarse_xyz,
                        self.heights(batch, coarse_xyz), batch["K"], tuple(batch["image"].shape[-2:]),
                        batch.get("yaw_prior"), batch.get("centre_prior"))
        out["coarse_xyz"] = coarse_xyz
        return out, (image_features, coarse_feats, skips)


class ICLMEncoders(nn.Module):
    """ICLM's own encoders (``iclm.own_encoders``): an image encoder and decoder and a point encoder built as GPDM's
    are (``conf``: ICL's), so that ICLM never reads GPDM's frozen features."""

    def __init__(self, conf: dict):
        super().__init__()
        self.image_encoder = build_image_encoder(conf["image_encoder"])
        self.image_decoder = ImageDecoder(self.image_encoder.widths, conf["image_encoder"]["token_dim"],
                                          conf["image_encoder"]["token_stride"])
        self.point_encoder = KPConvEncoder(conf["point_encoder"])

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the pixel token map (B, token_dim, H / token_stride, W / token_stride) and the coarse points' features
        (B, M, out_dim), in the order of GPDM's coarse points."""
        token_map = self.image_decoder(self.image_encoder(batch["image"]))
        return token_map, self.point_encoder(batch)[1]
