"""ONNX export: a tiny coarse-to-fine model exported by ``i2preg export`` and run by ONNX Runtime gives PyTorch's
poses and confidence on sample pairs, at batch sizes 1 and 2 of one exported graph; KPConv's form that the export
traces equals the model's own. (An export takes minutes whatever the model's width, in proportion to its graph's
nodes: the tests export one model, small in depth. The bundled model's export: benchmarks/onnx_speed.py compares
its poses on the test set.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i2preg import api
from i2preg.api import Registrator
from i2preg.assembly import full_config
from i2preg.cli import main
from i2preg.config import deep_update, load_config
from i2preg.errors import InputError
from i2preg.export import GLOBAL_KP_2D, OUTPUTS, OnnxNetwork, example_batch, output_names
from i2preg.geometry import sample_perturbation, transform_points
from i2preg.model.icl import ICL
from i2preg.sample import load_sample
from i2preg.weights import save_weights


def sample_pairs(count: int) -> list[tuple]:
    """The bundled sample pair, then the same frame with its cloud moved by protocol perturbations (seeds 1...):
    (image, points (N, 4), K) each."""
    image, points, K, _ = load_sample()
    pairs = [(image, points, K)]
    for seed in range(1, count):
        moved = transform_points(sample_perturbation(np.random.default_rng(seed)), points[:, :3].astype(np.float64))
        pairs.append((image, np.c_[moved, points[:, 3]], K))
    return pairs


def assert_same_results(torch_results, onnx_results, pose_atol: float = 1e-4) -> None:
    for a, b in zip(torch_results, onnx_results, strict=True):
        np.testing.assert_allclose(b.pose, a.pose, atol=pose_atol, rtol=0)
        np.testing.assert_allclose(b.frustum_pose, a.frustum_pose, atol=pose_atol, rtol=0)
        np.testing.assert_allclose(b.keypoints_3d, a.keypoints_3d, atol=1e-3, rtol=0)
        # pixels: a window is centred on a projection, which float rounding moves by up to ~1e-4 of its distance from
        # the image centre (far outside the image for the random tiny model's 3D keypoints near the camera plane)
        np.testing.assert_allclose(b.keypoints_2d, a.keypoints_2d, atol=5e-2, rtol=3e-4)
        assert abs(b.confidence - a.confidence) < 1e-3


def exported_config() -> dict:
    """The tiny model with a coarse-to-fine window stage and the fine search (on the input points, with a residual
    layer in its score), small in the depths an export's time grows with: two pyramid levels, one pose-search
    refinement, one fine grid (each op kind of the model is still in its graph)."""
    return full_config(deep_update(load_config("tiny"), {"model": {
        "iclm": {"windows": [[4, 32]]}, "gpdm": {"refine_iterations": 1},
        "point_encoder": {"widths": [8, 16], "subsample_sizes": [256], "coarse_level": 1},
        "fine": {"num_points": 64, "level": 0, "iterations": 1, "residual_layers": 1}}}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """Weights of ``exported_config`` (seed 0) and their network exported by ``i2preg export``."""
    cfg = exported_config()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export")
    save_weights(ICL(cfg["model"]), folder / "tiny.safetensors", cfg)
    assert main(["export", "--weights", str(folder / "tiny.safetensors"), "--out", str(folder / "tiny.onnx")]) == 0
    return folder / "tiny.safetensors", folder / "tiny.onnx"


def test_the_forms_export_traces_equal_the_sparse_ones(monkeypatch):
    """While exporting, KPConv runs over dense influences and the pose search scores every (hypothesis, point) pair:
    the same outputs as the sparse forms, for the encoder and for the whole tiny model."""
    torch.manual_seed(0)
    cfg = full_config(load_config("tiny"))
    model = ICL(cfg["model"]).eval()
    batch = example_batch(model.conf, (64, 128), 1024, batch_size=2)
    with torch.no_grad():
        sparse = model(batch)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        dense = model(batch)
    for key in ("coarse_xyz", "cls_logits", "yaw_logits", "refine_logits", "frustum_pose", "kp_2d", "kp_3d", "pose"):
        torch.testing.assert_close(dense[key], sparse[key], atol=1e-4, rtol=1e-4, msg=key)
    assert (sparse["yaw_logits"] != 0).any()


@pytest.mark.slow
def test_onnx_backend_equals_torch_on_a_tiny_model(tiny):
    """Poses, keypoints and confidence; the confidence of a window model scores its global stage's 2D keypoints
    (``inference.infer``), which the graph exports too."""
    weights, onnx_file = tiny
    reference = Registrator.from_pretrained(weights)
    exported = Registrator.from_pretrained(weights, backend=onnx_file)
    pairs = sample_pairs(3)
    assert_same_results([reference.register(*p) for p in pairs], [exported.register(*p) for p in pairs])
    batch = reference.register_batch(*zip(*pairs[1:]))
    assert_same_results(batch, exported.register_batch(*zip(*pairs[1:])))  # a batch of 2, same graph
    draws = [Registrator.from_pretrained(weights, backend=backend, point_draws=3) for backend in ("torch", onnx_file)]
    results = [reg.register_batch(*zip(*pairs[1:])) for reg in draws]  # 2 pairs x 3 draws: a batch of 6
    assert_same_results(*results)
    assert [r.info["draws_agreeing"] for r in results[0]] == [r.info["draws_agreeing"] for r in results[1]]
    collated = example_batch(reference.model.conf, (64, 128), 1024, batch_size=2)
    with torch.no_grad():
        expected = reference.model(collated)["coarse_stages"][0]["kp_2d"]
    global_kp_2d = exported.network(collated)["coarse_stages"][0]["kp_2d"]
    torch.testing.assert_close(global_kp_2d, expected, atol=1e-2, rtol=1e-4)
    assert (global_kp_2d - exported.network(collated)["kp_2d"]).abs().max() > 0.1  # not the window stage's
    with pytest.raises(InputError, match="a prior pose needs the PyTorch backend"):
        exported.register(*pairs[0], prior_pose=np.eye(4))


def test_window_and_fine_models_export_their_global_keypoints_and_fine_pose_too():
    assert output_names(full_config(load_config("tiny"))["model"]) == list(OUTPUTS)
    assert output_names(exported_config()["model"]) == [*OUTPUTS, GLOBAL_KP_2D, "fine_pose"]


@pytest.mark.slow
def test_onnx_file_of_other_weights_or_not_onnx_is_refused(tiny, tmp_path):
    weights, onnx_file = tiny
    cfg = exported_config()
    torch.manual_seed(1)
    other = ICL(cfg["model"])
    with pytest.raises(InputError, match="other weights"):
        Registrator(other, cfg, backend=onnx_file)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(InputError, match="bad.onnx"):
        OnnxNetwork(tmp_path / "bad.onnx", other)
    with pytest.raises(InputError, match="no such ONNX file"):
        OnnxNetwork(tmp_path / "missing.onnx", other)


def test_example_batch_has_the_collate_keys():
    conf = full_config(load_config("tiny"))["model"]
    batch = example_batch(conf, (64, 128), 1024, batch_size=3)
    assert batch["image"].shape == (3, 3, 64, 128) and batch["points"].shape == (3, 1024, 3)
    assert len(batch["pyramid_xyz"]) == len(conf["point_encoder"]["widths"])


@pytest.mark.slow
def test_onnx_backend_exports_the_model_in_memory(tiny, monkeypatch):
    """backend="onnx": the Registrator exports its model for its own input size and runs the bytes."""
    weights, onnx_file = tiny
    calls = []

    def export(model, path, image_size, num_points):
        calls.append((path, image_size, num_points))
        return onnx_file.read_bytes()

    monkeypatch.setattr(api, "export_onnx", export)
    reg = Registrator.from_pretrained(weights, backend="onnx")
    assert calls == [(None, (64, 128), 1024)] and isinstance(reg.network, OnnxNetwork)
    image, points, K = sample_pairs(1)[0]
    assert_same_results([Registrator.from_pretrained(weights).register(image, points, K)], [reg.register(image, points, K)])
