"""ONNX export of the ICL network and its ONNX Runtime runner (``i2preg export``, ``Registrator(backend=...)``).

The exported graph is ``ICL.forward`` on a collated batch (``data.collate``): its inputs are the batch's tensors
(``input_names``: the image, K, the ground plane and the point pyramid, whose plane and neighbour indices the
collate computes), its outputs ``output_names``; the batch size is dynamic. While ``torch.export`` traces the model,
KPConv runs its scatter form (``model.point_encoder.KernelEntries``), which no data-dependent Python number steers;
the rest is the model's own code. ONNX has no matrix inverse, so ``torch.linalg.inv`` (PRM's K^-1, 3 x 3) is written
out by cofactors. The file carries the model's fingerprint (``model_fingerprint``), so that a runner refuses other
weights.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .assembly import load_model
from .data.collate import Collate
from .data.pairs import pair_config
from .errors import InputError, require_output_folder
from .files import write_bytes
from .model.icl import ICL
from .weights import resolve_weights

OUTPUTS = ("pose", "frustum_pose", "kp_2d", "kp_3d")
"""The exported outputs, keys of ``ICL.forward``: pose, frustum_pose (B, 4, 4) cloud -> camera; kp_2d (B, Nq, 2)
input-image pixels; kp_3d (B, Nq, 3) cloud frame."""

GLOBAL_KP_2D = "global_kp_2d"
"""The output a coarse-to-fine model (``iclm.windows``) exports too: its global stage's kp_2d (B, Nq, 2), pixels
(``ICL.forward``'s coarse_stages[0]), which ``inference.infer``'s confidence scores."""

FINGERPRINT_KEY = "i2preg.model_fingerprint"
OPSET = 18
MAX_BATCH = 1024
"""The largest batch the exported graph takes (torch.export bounds the data-dependent sizes by it)."""


def _optional(module: str):
    """Import an optional dependency of this module (the ``onnx`` extra), or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"ONNX export and ONNX Runtime need {module}: pip install 'i2preg[onnx]'") from None


def input_names(num_levels: int) -> list[str]:
    """The graph's inputs for a pyramid of ``num_levels`` levels, in order: image, K, ground, then pyramid_xyz_l,
    pyramid_neighbors_l (l < num_levels), pyramid_pools_l, pyramid_upsamples_l (l < num_levels - 1): the
    collated batch's tensors (``data.collate``), lists flattened by level."""
    names = ["image", "K", "ground"]
    for key, count in (("pyramid_xyz", num_levels), ("pyramid_neighbors", num_levels),
                       ("pyramid_pools", num_levels - 1), ("pyramid_upsamples", num_levels - 1)):
        names += [f"{key}_{level}" for level in range(count)]
    return names


def flat_inputs(batch: dict, num_levels: int) -> dict[str, torch.Tensor]:
    """A collated batch -> {input name: tensor} (``input_names``)."""
    flat = {"image": batch["image"], "K": batch["K"], "ground": batch["ground"]}
    for name in input_names(num_levels)[3:]:
        key, level = name.rsplit("_", 1)
        flat[name] = batch[key][int(level)]
    return flat


def output_names(conf: dict) -> list[str]:
    """The graph's outputs for an ICL of model config ``conf``: ``OUTPUTS``, then ``GLOBAL_KP_2D`` when its ICLM
    refines in windows, and fine_pose (B, 4, 4) when it has the fine search (``model.fine``)."""
    return (list(OUTPUTS) + ([GLOBAL_KP_2D] if conf["iclm"]["windows"] else [])
            + (["fine_pose"] if conf["fine"]["num_points"] > 0 else []))


class FlatForward(nn.Module):
    """``ICL.forward`` on the inputs ``input_names`` (positional) -> the ``output_names`` tensors, in that order."""

    def __init__(self, model: ICL):
        super().__init__()
        self.model = model
        self.num_levels = len(model.conf["point_encoder"]["widths"])
        self.outputs = output_names(model.conf)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        L = self.num_levels
        image, K, ground, rest = tensors[0], tensors[1], tensors[2], list(tensors[3:])
        xyz, neighbors, pools, upsamples = rest[:L], rest[L : 2 * L], rest[2 * L : 3 * L - 1], rest[3 * L - 1 :]
        out = self.model({"image": image, "K": K, "ground": ground, "pyramid_xyz": xyz,
                          "pyramid_neighbors": neighbors, "pyramid_pools": pools, "pyramid_upsamples": upsamples})
        if GLOBAL_KP_2D in self.outputs:
            out[GLOBAL_KP_2D] = out["coarse_stages"][0]["kp_2d"]
        return tuple(out[key] for key in self.outputs)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's state (names, shapes and values), hex: equal for equal weights."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def example_batch(conf: dict, image_size: tuple[int, int], num_points: int, batch_size: int = 2) -> dict:
    """A collated batch of random images and clouds (a 60 x 3 x 60 m box about the camera) of the network's input
    size, to trace the model with."""
    rng = np.random.default_rng(0)
    H, W = image_size
    K = np.array([[W / 2, 0, (W - 1) / 2], [0, W / 2, (H - 1) / 2], [0, 0, 1]], dtype=np.float32)
    samples = [{"image": rng.random((3, H, W), dtype=np.float32), "K": K,
                "points": rng.uniform([-30, -2, -30], [30, 1, 30], (num_points, 3)).astype(np.float32),
                "intensity": np.zeros(num_points, np.float32), "T_gt": np.eye(4, dtype=np.float32),
                "resampled": False, "meta": {}} for _ in range(batch_size)]
    return Collate(conf)(samples)


def _inverse_3x3(A):
    """ONNX for aten.linalg_inv on (..., 3, 3): the adjugate over the determinant."""
    from onnxscript import opset18 as op

    def entry(i: int, j: int):
        row = op.Gather(A, op.Constant(value_int=i), axis=-2)
        return op.Gather(row, op.Constant(value_int=j), axis=-1)

    a = [[entry(i, j) for j in range(3)] for i in range(3)]

    def minor(r0, r1, c0, c1):
        return op.Sub(op.Mul(a[r0][c0], a[r1][c1]), op.Mul(a[r0][c1], a[r1][c0]))

    # adjugate: adj[i][j] = cofactor[j][i]
    cof = [[minor(1, 2, 1, 2), op.Neg(minor(1, 2, 0, 2)), minor(1, 2, 0, 1)],
           [op.Neg(minor(0, 2, 1, 2)), minor(0, 2, 0, 2), op.Neg(minor(0, 2, 0, 1))],
           [minor(0, 1, 1, 2), op.Neg(minor(0, 1, 0, 2)), minor(0, 1, 0, 1)]]
    det = op.Add(op.Add(op.Mul(a[0][0], cof[0][0]), op.Mul(a[0][1], cof[0][1])), op.Mul(a[0][2], cof[0][2]))
    last = op.Constant(value_ints=[-1])
    rows = [op.Concat(*[op.Unsqueeze(op.Div(cof[j][i], det), last) for j in range(3)], axis=-1) for i in range(3)]
    return op.Concat(*[op.Unsqueeze(row, op.Constant(value_ints=[-2])) for row in rows], axis=-2)


def export_onnx(model: ICL, path: str | os.PathLike | None, image_size: tuple[int, int], num_points: int) -> bytes:
    """Export ``model``'s forward (eval mode, CPU, float32) for (H, W) = ``image_size`` images and clouds of
    ``num_points`` points, with a dynamic batch size; write it to ``path`` (atomically) when given. Returns the
    serialised ONNX model."""
    _optional("onnxscript")  # torch.onnx's exporter
    model = model.eval().cpu()
    num_levels = len(model.conf["point_encoder"]["widths"])
    inputs = flat_inputs(example_batch(model.conf, image_size, num_points), num_levels)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    forward = FlatForward(model).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            forward, tuple(inputs.values()), dynamo=True, opset_version=OPSET,
            input_names=list(inputs), output_names=forward.outputs,
            dynamic_shapes=(tuple({0: batch} for _ in inputs),),  # one entry: the *tensors of FlatForward
            custom_translation_table={torch.ops.aten.linalg_inv.default: _inverse_3x3}, verbose=False,
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = FINGERPRINT_KEY, model_fingerprint(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "i2preg.config", json.dumps(model.conf)
    data = proto.SerializeToString()
    if path is not None:
        write_bytes(path, data)
    return data


def export_weights(weights: str | os.PathLike | None, out: str | os.PathLike) -> Path:
    """``i2preg export``: the ICL of ``weights`` (a file or a bundled model's name; None: the bundled one) as an
    ONNX file at ``out``, for its own network input (``data.crop``, ``data.num_points``). Returns ``out``."""
    if Path(out).is_dir():
        raise InputError("is a folder: give the .onnx file to write", out)
    require_output_folder(Path(out).parent)
    path = resolve_weights(weights)
    model, config = load_model(path)
    if not isinstance(model, ICL):
        raise InputError(f"{config['method']} weights: i2preg export exports ICL", path)
    data = pair_config(config)
    export_onnx(model, out, tuple(data["crop"]), int(data["num_points"]))
    return Path(out)


class OnnxNetwork:
    """An exported ICL forward run by ONNX Runtime on CPU, called like the model: a collated batch -> the
    ``OUTPUTS`` tensors (a dict, float32, CPU), and for a coarse-to-fine model coarse_stages [{"kp_2d": the global
    stage's}] as ``ICL.forward`` gives it.

    source: an .onnx file (``export_onnx``) or its bytes; model: the ICL it must have been exported from (its
    fingerprint is checked); threads: ONNX Runtime's intra-op threads (None: torch's thread count)."""

    def __init__(self, source: str | os.PathLike | bytes, model: ICL, threads: int | None = None):
        onnxruntime = _optional("onnxruntime")

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        where = "exported model" if isinstance(source, bytes) else Path(source)
        if not isinstance(source, bytes):
            if not Path(source).is_file():
                raise InputError("no such ONNX file", source)
            source = Path(source).read_bytes()
        try:
            self.session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types, one per failure
            raise InputError(f"not an ONNX model ONNX Runtime can run ({str(err).splitlines()[0]})", where) from None
        fingerprint = self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
        if fingerprint != model_fingerprint(model):
            raise InputError("the ONNX model was exported from other weights (i2preg export --weights W)", where)
        self.num_levels = len(model.conf["point_encoder"]["widths"])
        self.outputs = output_names(model.conf)

    def __call__(self, batch: dict) -> dict:
        feeds = {name: tensor.cpu().numpy() for name, tensor in flat_inputs(batch, self.num_levels).items()}
        out = {key: torch.from_numpy(value) for key, value in zip(self.outputs, self.session.run(self.outputs, feeds))}
        if GLOBAL_KP_2D in out:
            out["coarse_stages"] = [{"kp_2d": out.pop(GLOBAL_KP_2D)}]
        return out
