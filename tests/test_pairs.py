"""The benchmark protocol (METHOD section 3): crops, intrinsics, sampling, seeded perturbations."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from i2preg.data.kitti import Calibration, CameraCalibration, FrameId, read_calib_file
from i2preg.data.ops import sample_indices, voxel_downsample
from i2preg.data.pairs import KittiPairs, build_dataset, build_pair, pair_config, resize_and_crop, resize_intrinsics
from i2preg.errors import InputError
from i2preg.geometry import in_image, invert_transform, project_pose, transform_points

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti_object_sample" / "training"
K = np.array([[700.0, 0.0, 610.0], [0.0, 700.0, 185.0], [0.0, 0.0, 1.0]])
SMALL = {"num_points": 1024}


class FakeFrames:
    """In-memory frames with the reader interface: 1242 x 375 images, a random cloud in front of the car."""

    def __init__(self, num_frames=3, num_points=3000):
        rng = np.random.default_rng(0)
        self.frames = [FrameId("00", i) for i in range(num_frames)]
        self.clouds = [np.c_[rng.uniform([-20, -20, -2], [20, 20, 1], (num_points, 3)), rng.uniform(0, 1, num_points)]
                       .astype(np.float32) for _ in range(num_frames)]
        T_cam_velo = np.array([[0.0, -1, 0, 0.06], [0, 0, -1, -0.1], [1, 0, 0, -0.3], [0, 0, 0, 1]])
        self.calib = Calibration({c: CameraCalibration(K, T_cam_velo) for c in (2, 3)}, "fake")

    def __len__(self):
        return len(self.frames)

    def image(self, i, camera):
        return np.full((375, 1242, 3), 10 * i + camera, np.uint8)

    def points(self, i):
        return self.clouds[i]

    def calibration(self, i):
        return self.calib


def euler_xyz(T):
    """(rx, ry, rz) with R = Rz(rz) Ry(ry) Rx(rx)."""
    return Rotation.from_matrix(T[:3, :3]).as_euler("ZYX")[::-1]


def test_sample_dict_interface():
    sample = KittiPairs(FakeFrames(), SMALL)[1]
    assert set(sample) == {"image", "K", "points", "intensity", "T_gt", "resampled", "meta", "dense_points"}
    assert sample["image"].shape == (3, 160, 512) and sample["image"].dtype == torch.float32
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["K"].shape == (3, 3) and sample["T_gt"].shape == (4, 4)
    assert sample["points"].shape == (1024, 3) and sample["intensity"].shape == (1024,)
    assert all(sample[k].dtype == torch.float32 for k in ("K", "points", "intensity", "T_gt", "dense_points"))
    dense = sample["dense_points"]  # the voxel-kept points of the 3,000 (fewer than 40,960), none twice
    assert 2000 < len(dense) <= 3000 and len(torch.unique(dense, dim=0)) == len(dense) and dense.shape[1] == 3
    assert sample["meta"] == {"sequence": "00", "frame": 0, "camera": 3, "index": 1}
    assert sample["image"][0, 0, 0] == pytest.approx(3 / 255)


def test_two_samples_per_frame_one_per_camera():
    pairs = KittiPairs(FakeFrames(num_frames=3), SMALL)
    assert len(pairs) == 6
    assert [pairs[i]["meta"]["camera"] for i in range(4)] == [2, 3, 2, 3]
    assert [pairs[i]["meta"]["frame"] for i in range(4)] == [0, 0, 1, 1]


def test_exactly_n_points_and_resampled_flag():
    big, meta = KittiPairs(FakeFrames(num_points=3000), SMALL).pair(0)
    assert len(big.points) == 1024 and not big.resampled and len(set(big.source_index)) == 1024
    small, _ = KittiPairs(FakeFrames(num_points=300), SMALL).pair(0)
    assert len(small.points) == 1024 and small.resampled
    assert set(small.source_index) == set(range(300))  # every point kept, the rest repeated


def test_voxel_downsample_keeps_one_point_per_voxel():
    points = np.array([[0.01, 0.01, 0.01], [0.05, 0.02, 0.09], [0.15, 0, 0], [-0.01, 0, 0], [0.19, 0.05, 0.05]])
    np.testing.assert_array_equal(voxel_downsample(points, 0.1), [0, 2, 3])
    kept = voxel_downsample(points, 0.1, np.random.default_rng(1))
    assert len(kept) == 3 and 3 in kept
    indices, resampled = sample_indices(5, 3, np.random.default_rng(0))
    assert len(set(indices)) == 3 and not resampled


def first_per_voxel(points, voxel, rng=None):
    """The formulation voxel_downsample replaced: np.unique's first index of each voxel in the (random) order."""
    order = np.arange(len(points)) if rng is None else rng.permutation(len(points))
    cells = np.floor(points[order] / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    keys = [tuple(cell) for cell in cells]
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return np.sort(order[list(first.values())])


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_voxel_downsample_keeps_each_voxels_first_point_in_its_order(seed):
    points = np.random.default_rng(5).normal(scale=1.0, size=(3000, 3))
    rngs = [None if seed is None else np.random.default_rng(seed) for _ in range(2)]  # the same draws for both
    kept = voxel_downsample(points, 0.3, rngs[0])
    assert len(kept) < 0.8 * len(points)  # voxels with several points, where the order decides
    np.testing.assert_array_equal(kept, first_per_voxel(points, 0.3, rngs[1]))


def test_voxel_downsample_of_a_cloud_too_large_for_one_int64_key():
    points = np.array([[0.0, 0.0, 0.0], [2e5, 2e5, 2e5], [0.0625, 0.0, 0.0], [2e5, 2e5, 2e5 + 0.0625]] * 2)
    # 1.6e6 voxels an axis: voxel numbers up to 4.1e18, which times the 8 points pass 2**63
    np.testing.assert_array_equal(voxel_downsample(points, 0.125), [0, 1])
    for seed in range(3):
        kept = voxel_downsample(points, 0.125, np.random.default_rng(seed))
        np.testing.assert_array_equal(kept, first_per_voxel(points, 0.125, np.random.default_rng(seed)))


def test_centre_crop_offsets_and_intrinsics():
    image = np.zeros((375, 1242, 3), np.uint8)
    cropped, K_crop, (dx, dy) = resize_and_crop(image, K, 0.5, (160, 512), rng=None)
    assert cropped.shape == (160, 512, 3)
    assert (dx, dy) == ((621 - 512) // 2, (188 - 160) // 2) == (54, 14)
    np.testing.assert_allclose(K_crop, [[350, 0, 0.5 * 610 - 0.25 - 54], [0, 350, 0.5 * 185 - 0.25 - 14], [0, 0, 1]])


def test_resized_intrinsics_follow_the_image_content():
    """A 2 x 2 block centred on pixel (100.5, 50.5) becomes resized pixel (50, 25): K' maps it there."""
    image = np.zeros((120, 240, 3), np.uint8)
    image[50:52, 100:102] = 255
    resized = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    assert resized[25, 50, 0] == 255 and resized.sum() == 3 * 255
    point = np.linalg.solve(K, [100.5, 50.5, 1.0])  # a camera-frame ray hitting the block centre
    u, v, w = resize_intrinsics(K, 0.5) @ point
    assert (u / w, v / w) == pytest.approx((50, 25), abs=1e-9)


def test_random_crop_in_training_stays_inside():
    rng = np.random.default_rng(0)
    offsets = {resize_and_crop(np.zeros((375, 1242, 3), np.uint8), K, 0.5, (160, 512), rng)[2] for _ in range(20)}
    assert len(offsets) > 1 and all(0 <= dx <= 621 - 512 and 0 <= dy <= 188 - 160 for dx, dy in offsets)


def test_too_small_image_is_an_input_error():
    with pytest.raises(InputError, match="smaller than the 512x160 crop"):
        resize_and_crop(np.zeros((300, 900, 3), np.uint8), K, 0.5, (160, 512), rng=None)


def test_ground_truth_recovers_camera_frame_points():
    frames = FakeFrames()
    pair, _ = KittiPairs(frames, SMALL).pair(2)
    expected = transform_points(frames.calib[2].T_cam_velo, frames.clouds[1][pair.source_index, :3].astype(np.float64))
    np.testing.assert_allclose(transform_points(pair.T_gt, pair.points), expected, atol=1e-9)
    np.testing.assert_array_equal(pair.intensity, frames.clouds[1][pair.source_index, 3])


def test_test_split_is_deterministic():
    first, again = KittiPairs(FakeFrames(), SMALL)[3], KittiPairs(FakeFrames(), SMALL)[3]
    for key in ("image", "K", "points", "intensity", "T_gt"):
        assert torch.equal(first[key], again[key]), key
    assert first["meta"] == again["meta"]


def test_test_perturbation_depends_only_on_seed_and_index():
    a = KittiPairs(FakeFrames(num_points=3000), SMALL).pair(4)[0]
    b = KittiPairs(FakeFrames(num_points=500), {**SMALL, "num_points": 2048}).pair(4)[0]
    np.testing.assert_array_equal(a.T_gt, b.T_gt)
    c = KittiPairs(FakeFrames(), {**SMALL, "seed": 1}).pair(4)[0]
    assert not np.allclose(a.T_gt, c.T_gt)


def test_different_pairs_get_different_perturbations():
    pairs = KittiPairs(FakeFrames(num_frames=3), SMALL)
    poses = [pairs.pair(i)[0].T_gt for i in range(len(pairs))]
    assert all(not np.allclose(poses[i], poses[j]) for i in range(len(poses)) for j in range(i))


def test_training_pairs_are_random():
    pairs = KittiPairs(FakeFrames(), SMALL, train=True)
    assert not np.allclose(pairs.pair(0)[0].T_gt, pairs.pair(0)[0].T_gt)
    torch.manual_seed(3)
    first = pairs.pair(0)[0]
    torch.manual_seed(3)
    np.testing.assert_array_equal(first.T_gt, pairs.pair(0)[0].T_gt)


def test_epoch_keyed_training_pairs_depend_only_on_epoch_and_index():
    pairs = KittiPairs(FakeFrames(), SMALL, train=True)
    a, b = pairs.pair((4, 1))[0], pairs.pair((4, 1))[0]
    np.testing.assert_array_equal(a.T_gt, b.T_gt)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.allclose(a.T_gt, pairs.pair((5, 1))[0].T_gt)
    assert not np.allclose(a.T_gt, pairs.pair((4, 0))[0].T_gt)


def test_standard_amplitudes_respected():
    pairs = KittiPairs(FakeFrames(num_frames=20, num_points=200), {**SMALL, "num_points": 64})
    perturbations = np.stack([invert_transform(pairs.pair(i)[0].T_gt) for i in range(0, 40, 3)])
    t = perturbations[:, :3, 3]
    assert np.abs(t[:, [0, 2]]).max() <= 10 and np.all(t[:, 1] == 0) and np.abs(t).max() > 3
    np.testing.assert_allclose(perturbations[:, 1, :3], np.tile([0, 1, 0], (len(t), 1)), atol=1e-12)  # yaw only
    np.testing.assert_allclose(perturbations[:, :3, 1], np.tile([0, 1, 0], (len(t), 1)), atol=1e-12)
    yaw = np.arctan2(perturbations[:, 0, 2], perturbations[:, 0, 0])
    assert np.abs(yaw).max() > 1.5


def test_six_dof_config_gives_roll_and_pitch():
    amplitudes = [2.0, 1.0, 2.0, math.radians(20), math.radians(60), math.radians(20)]
    pairs = KittiPairs(FakeFrames(num_frames=10, num_points=200), {**SMALL, "num_points": 64, "amplitudes": amplitudes})
    perturbations = np.stack([invert_transform(pairs.pair(i)[0].T_gt) for i in range(20)])
    t = perturbations[:, :3, 3]
    assert np.all(np.abs(t) <= [2, 1, 2]) and np.abs(t[:, 1]).min() > 0
    angles = np.abs(np.stack([euler_xyz(P) for P in perturbations]))  # unique while |ry| < 90 degrees
    assert np.all(angles <= np.array(amplitudes[3:]) + 1e-9) and angles.min(axis=0).min() > 0
    assert angles[:, [0, 2]].max() > math.radians(10)


def test_pair_config_and_splits(tmp_path):
    cfg = pair_config({"data": {"num_points": 8}})
    assert cfg["num_points"] == 8 and cfg["voxel"] == 0.1 and cfg["seed"] == 7351
    assert cfg["train_sequences"] == [f"{i:02d}" for i in range(9)] and cfg["test_sequences"] == ["09", "10"]
    with pytest.raises(InputError, match="split"):
        build_dataset({}, "dev", tmp_path)
    with pytest.raises(InputError, match="no dataset root"):
        build_dataset({}, "test")
    with pytest.raises(InputError, match="sequences: no such folder"):
        build_dataset({"data": {"test_root": str(tmp_path)}}, "test")


def test_build_pair_on_a_single_frame_with_a_given_perturbation():
    frames = FakeFrames()
    identity = np.eye(4)
    pair = build_pair(frames.image(0, 2), frames.clouds[0][:, :3], None, K, frames.calib[2].T_cam_velo, SMALL,
                      np.random.default_rng(0), perturbation=identity)
    np.testing.assert_array_equal(pair.T_gt, identity)
    assert np.all(pair.intensity == 0)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="no real KITTI sample at ../shared/data")
def test_real_pairs_reproduce_the_unperturbed_projection():
    """Project the sampled points with T_gt and the pair's K; compare with the raw KITTI chain
    P2 @ R0_rect @ Tr_velo_to_cam on the same velodyne points, mapped by the resize and the crop."""
    pairs = build_dataset({"data": {"layout": "object", "cameras": [2]}}, "test", SAMPLE)
    for index in (0, 3):
        pair, meta = pairs.pair(index)
        sample = pair.to_sample(meta)
        assert sample["points"].shape == (40960, 3) and not sample["resampled"]
        calib = read_calib_file(SAMPLE / "calib" / f"{meta['frame']:06d}.txt")
        R0, Tr = np.eye(4), np.eye(4)
        R0[:3, :3], Tr[:3] = calib["R0_rect"].reshape(3, 3), calib["Tr_velo_to_cam"].reshape(3, 4)
        velodyne = pairs.frames.points(index)[pair.source_index, :3].astype(np.float64)
        h = np.c_[velodyne, np.ones(len(velodyne))] @ (calib["P2"].reshape(3, 4) @ R0 @ Tr).T
        expected = 0.5 * (h[:, :2] / h[:, 2:] + 0.5) - 0.5 - pair.crop_offset
        visible = in_image(expected, h[:, 2], 160, 512)
        assert visible.sum() > 5000
        uv, _, inside = project_pose(sample["points"].double().numpy(), sample["T_gt"].double().numpy(),
                                     sample["K"].double().numpy(), 160, 512)
        assert np.abs(uv - expected)[visible].max() < 1e-3
        assert (inside == visible).mean() > 0.999


def test_point_draws_are_the_pair_with_other_samples_of_its_points():
    """The first draw is the pair as without draws; the others share its image, K and ground truth, and draw
    other points from the same voxel-kept cloud."""
    single = KittiPairs(FakeFrames(), SMALL)[2]
    draws = KittiPairs(FakeFrames(), SMALL, point_draws=3)[2]
    assert len(draws) == 3
    for key in ("image", "K", "points", "intensity", "T_gt", "dense_points"):
        assert torch.equal(draws[0][key], single[key]), key
    for draw in draws[1:]:
        for key in ("image", "K", "T_gt"):
            assert torch.equal(draw[key], single[key]), key
        assert draw["points"].shape == single["points"].shape and not torch.equal(draw["points"], single["points"])
        assert draw["meta"] == single["meta"]
    dense = {tuple(p) for p in single["dense_points"].tolist()}  # every voxel-kept point (fewer than 40,960)
    assert all(tuple(p) in dense for draw in draws for p in draw["points"].tolist())
    assert not torch.equal(draws[1]["points"], draws[2]["points"])
    with pytest.raises(InputError, match="point_draws must be 1 in training"):
        KittiPairs(FakeFrames(), SMALL, train=True, point_draws=2)
