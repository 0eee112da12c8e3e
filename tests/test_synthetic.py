"""The synthetic street generator: KITTI layout and formats, determinism, LiDAR-camera geometric
consistency, the route, and the nuScenes preset."""

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from i2preg.data.synthetic import SyntheticSequence, generate_dataset
from i2preg.errors import InputError

SEED, FRAMES = 7, 2
# The default appearance's output, which defines the bundled model's training data and the 200-pair test set:
# sha256 (tree_digest) of its text files, each image's size and per-channel mean and std (assert_images), and each
# LiDAR scan's point count and per-column mean and std (assert_scans). Images and scans are compared by moments, not
# byte for byte: the ray casting rounds differently across CPUs and builds of the numeric packages (up to 1.5e-5 m
# on 12 % of the points of the sample frame between two machines' package sets; between embreex 2.17 and 4.4 on one
# machine, 9 of the four images' 1.9 million pixels, by at most 9 grey levels).
KITTI_DIGEST = "38c0559d913a73e8bf558a10c4063d5b9b0293d58574a53c78245abd8619f803"  # sequence 0, 2 frames, seed 7
KITTI_IMAGES = [[376, 1241, 109.225, 112.304, 121.237, 41.262, 45.451, 51.239],
                [376, 1241, 109.465, 113.036, 122.025, 40.561, 45.036, 50.838],
                [376, 1241, 109.785, 112.635, 121.382, 41.32, 45.596, 51.411],
                [376, 1241, 109.448, 112.878, 121.728, 40.755, 45.256, 51.068]]
KITTI_SCANS = [[117640, -0.747293, 0.83119, -1.385359, 0.131275, 14.476792, 13.92843, 0.727015, 0.125442],
               [117282, -0.999519, 0.875296, -1.366957, 0.135125, 14.515508, 13.448827, 0.731603, 0.130155]]
NUSCENES_DIGEST = "380531d886e49fda89c803c50e125c6b4a95038b9ef0be5e7b87e03d3530e7b1"  # 1 sequence of 1 frame, seed 7
NUSCENES_IMAGES = [[900, 1600, 115.145, 118.221, 127.409, 45.777, 48.459, 53.213],
                   [900, 1600, 115.035, 117.898, 126.895, 45.816, 48.464, 53.084]]
NUSCENES_SCANS = [[29754, -0.748964, 0.882024, -0.719361, 0.145814, 14.703197, 15.932838, 2.326253, 0.13638]]


def read_calib(path: Path) -> dict[str, np.ndarray]:
    rows = (line.split(":", 1) for line in path.read_text().splitlines() if line.strip())
    return {key: np.array(values.split(), dtype=np.float64).reshape(3, 4) for key, values in rows}


def sequence_files(root: Path, sequence: str = "00") -> dict[str, bytes]:
    files = [*(root / "sequences" / sequence).rglob("*"), root / "poses" / f"{sequence}.txt"]
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(files) if f.is_file()}


def tree_digest(root: Path) -> str:
    """sha256 over every text file under root (not the LiDAR scans, .bin, nor the images, .png), in path order: its
    relative path, then its bytes."""
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix not in (".bin", ".png"):
            digest.update(str(f.relative_to(root)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


def assert_images(root: Path, expected: list[list[float]]) -> None:
    """The images under root (.png, 8-bit, 3 channels, in path order): height and width, then the mean and std of
    each channel (in the file's order), as expected to 0.01 grey levels."""
    moments = []
    for f in sorted(root.rglob("*.png")):
        image = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, f
        pixels = image.reshape(-1, 3).astype(np.float64)
        moments.append([*image.shape[:2], *pixels.mean(0), *pixels.std(0)])
    np.testing.assert_allclose(np.array(moments), np.array(expected), atol=0.01, rtol=0)


def assert_scans(root: Path, expected: list[list[float]]) -> None:
    """The LiDAR scans under root (.bin, (N, 4) float32, in path order): N, then the mean and std of each column,
    as expected to 1e-4 (0.1 mm)."""
    moments = []
    for f in sorted(root.rglob("*.bin")):
        points = np.fromfile(f, np.float32).reshape(-1, 4).astype(np.float64)
        moments.append([len(points), *points.mean(0), *points.std(0)])
    np.testing.assert_allclose(np.array(moments), np.array(expected), atol=1e-4, rtol=0)


def camera_pixels(points: np.ndarray, calib: dict[str, np.ndarray], height: int, width: int):
    """Pixels (M, 2) int, cam2 depth (M,) of the scan points that land in image 2."""
    h = np.c_[points[:, :3], np.ones(len(points))] @ (calib["P2"] @ np.r_[calib["Tr"], [[0, 0, 0, 1]]]).T
    z = h[:, 2]
    uv = np.round(h[:, :2] / z[:, None]).astype(int)
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return uv[inside], z[inside]


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert generate_dataset(root, [0], FRAMES, SEED, progress=False) == root
    return root


@pytest.fixture(scope="module")
def plain_sequence() -> SyntheticSequence:
    """Sequence 0 of the default world, its mesh built once for the tests that render or scan it."""
    return SyntheticSequence(SEED, 0, FRAMES)


@pytest.fixture(scope="module")
def varied_sequence() -> SyntheticSequence:
    """Sequence 0 of the varied world, its mesh built once for the tests that render or scan it."""
    return SyntheticSequence(SEED, 0, FRAMES, appearance="varied")


def test_kitti_layout_and_formats(kitti_root):
    folder = kitti_root / "sequences" / "00"
    for frame in range(FRAMES):
        for camera in (2, 3):
            image = cv2.imread(str(folder / f"image_{camera}" / f"{frame:06d}.png"), cv2.IMREAD_UNCHANGED)
            assert image.shape == (376, 1241, 3) and image.dtype == np.uint8
            assert image.std() > 20  # a scene, not a blank frame
        raw = (folder / "velodyne" / f"{frame:06d}.bin").read_bytes()
        assert len(raw) % 16 == 0
        points = np.frombuffer(raw, "<f4").reshape(-1, 4)
        assert 80_000 < len(points) < 133_312  # 64 x 2083 firings, minus sky, dropout and max range
        assert np.isfinite(points).all() and points[:, 3].min() >= 0 and points[:, 3].max() <= 1
        assert np.linalg.norm(points[:, :3], axis=1).max() < 100.0

    calib = read_calib(folder / "calib.txt")
    assert list(calib) == ["P0", "P1", "P2", "P3", "Tr"]
    np.testing.assert_allclose(calib["P2"][:, 3], [45.38225, -0.1130887, 0.003779761])
    np.testing.assert_allclose(calib["P0"][:, :3], [[718.856, 0, 607.1928], [0, 718.856, 185.2157], [0, 0, 1]])

    poses = np.loadtxt(kitti_root / "poses" / "00.txt", ndmin=2)
    assert poses.shape == (FRAMES, 12)
    np.testing.assert_allclose(poses[0].reshape(3, 4), np.eye(4)[:3], atol=1e-9)
    times = np.loadtxt(folder / "times.txt", ndmin=1)
    assert times.shape == (FRAMES,) and times[0] == 0 and np.all(np.diff(times) > 0)
    assert not [f for f in kitti_root.rglob("*") if f.name.endswith(".tmp")]


def test_default_appearance_writes_the_reference_output(kitti_root):
    assert tree_digest(kitti_root) == KITTI_DIGEST
    assert_images(kitti_root, KITTI_IMAGES)
    assert_scans(kitti_root, KITTI_SCANS)


def test_varied_appearance_changes_the_world_not_the_drive(kitti_root, plain_sequence, varied_sequence, tmp_path):
    generate_dataset(tmp_path, [0], FRAMES, SEED, progress=False, appearance="varied")
    varied, default = sequence_files(tmp_path), sequence_files(kitti_root)
    assert varied.keys() == default.keys()
    for name in ("poses/00.txt", "sequences/00/calib.txt", "sequences/00/times.txt"):
        assert varied[name] == default[name]
    assert all(varied[name] != default[name] for name in varied if name.endswith((".png", ".bin")))
    seq, plain = varied_sequence, plain_sequence
    assert seq.world.varied and not plain.world.varied
    assert len(seq.world.faces) > len(plain.world.faces)  # the clutter
    assert seq.world.lighting.clouds > 0 and plain.world.lighting.clouds == 0
    rgb, _ = seq.render(1, 3)
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "sequences" / "00" / "image_3" / "000001.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb, written)  # camera responses are seeded per frame and camera


def test_varied_scan_agrees_with_its_camera_depth(varied_sequence):
    seq = varied_sequence
    calib = {f"P{i}": seq.rig.P[i] for i in range(4)} | {"Tr": seq.rig.Tr[:3]}
    uv, z = camera_pixels(seq.scan(0), calib, 376, 1241)
    _, depth = seq.render(0, 2)
    error = np.abs(depth[uv[:, 1], uv[:, 0]] - z)
    assert np.median(error) < 0.1 and np.mean(error < 0.3) > 0.85


def test_same_seed_same_bytes_whatever_else_is_generated(kitti_root, tmp_path):
    generate_dataset(tmp_path, [3, 0], FRAMES, SEED, workers=2, progress=False)
    assert sequence_files(tmp_path) == sequence_files(kitti_root)
    assert sequence_files(tmp_path, "03")["poses/03.txt"] != sequence_files(tmp_path)["poses/00.txt"]


def test_different_seed_different_world(kitti_root):
    other = SyntheticSequence(SEED + 1, 0, FRAMES)
    written = np.fromfile(kitti_root / "sequences" / "00" / "velodyne" / "000000.bin", "<f4").reshape(-1, 4)
    assert not np.array_equal(other.scan(0), written)
    assert other.poses_text() != (kitti_root / "poses" / "00.txt").read_text()


def test_lidar_agrees_with_camera_depth(kitti_root, plain_sequence):
    """The written scan, projected with P2 @ Tr, lands on the image where the camera sees a surface at
    the same depth (the LiDAR sits 0.27 m behind the camera, so occlusions differ a little)."""
    seq = plain_sequence
    folder = kitti_root / "sequences" / "00"
    calib = read_calib(folder / "calib.txt")
    assert seq.poses_text() == (kitti_root / "poses" / "00.txt").read_text()
    for frame in range(FRAMES):
        points = np.fromfile(folder / "velodyne" / f"{frame:06d}.bin", "<f4").reshape(-1, 4)
        uv, z = camera_pixels(points, calib, 376, 1241)
        assert len(z) > 12_000  # measured 15,000 - 16,600 over seeds and frames
        rgb, depth = seq.render(frame, 2)
        written = cv2.cvtColor(cv2.imread(str(folder / "image_2" / f"{frame:06d}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(rgb, written)
        error = np.abs(depth[uv[:, 1], uv[:, 0]] - z)
        assert np.median(error) < 0.1  # range noise is 2 cm
        assert np.mean(error < 0.3) > 0.85


def test_route_moves_forward_along_the_road():
    seq = SyntheticSequence(SEED, 1, 200)  # planning only; the world is not built
    poses = seq.poses
    yaw = np.unwrap(np.arctan2(poses[:, 0, 2], poses[:, 2, 2]))
    assert np.ptp(yaw) > np.radians(80)  # it turns at crossings
    steps = np.diff(poses[:, :3, 3], axis=0)
    np.testing.assert_array_less(np.linalg.norm(steps, axis=1), 5.0)
    assert np.all(np.linalg.norm(steps, axis=1) > 2.0)
    forward = poses[:-1, :3, 2]  # cam0's z axis in the frame of cam0 at frame 0
    cosine = np.sum(forward * steps, axis=1) / np.linalg.norm(steps, axis=1)
    assert np.all(cosine > np.cos(np.radians(30)))  # heading follows the road, also through turns
    np.testing.assert_allclose(poses[:, 1, 3], 0, atol=1e-9)  # level road: constant camera height
    grid = seq.grid
    x, y = seq.T_world_cam0[:, 0, 3], seq.T_world_cam0[:, 1, 3]
    i, j = grid.nearest(x, y)
    assert np.all((np.abs(x - grid.xs[i]) < grid.hx[i]) | (np.abs(y - grid.ys[j]) < grid.hy[j]))  # on a road


def test_nuscenes_preset(tmp_path):
    generate_dataset(tmp_path, 1, 1, SEED, sensor="nuscenes", progress=False)
    assert tree_digest(tmp_path) == NUSCENES_DIGEST
    assert_images(tmp_path, NUSCENES_IMAGES)
    assert_scans(tmp_path, NUSCENES_SCANS)
    folder = tmp_path / "sequences" / "00"
    for camera in (2, 3):
        assert cv2.imread(str(folder / f"image_{camera}" / "000000.png")).shape == (900, 1600, 3)
    points = np.fromfile(folder / "velodyne" / "000000.bin", "<f4").reshape(-1, 4)
    elevation = np.degrees(np.arctan2(points[:, 2], np.linalg.norm(points[:, :2], axis=1)))
    beams = np.unique(np.round(elevation, 1))
    assert 24 <= len(beams) <= 32 and elevation.max() < 10.1 and elevation.min() > -30.1
    uv, _ = camera_pixels(points, read_calib(folder / "calib.txt"), 900, 1600)
    assert len(uv) > 2_000  # measured about 3,250


@pytest.mark.parametrize(
    "kwargs", [dict(sensor="lidar-only"), dict(sequences=[100]), dict(sequences=[1, 1]), dict(frames=0),
               dict(appearance="photoreal")]
)
def test_bad_arguments(tmp_path, kwargs):
    args = dict(out_dir=tmp_path, sequences=1, frames=1, seed=0) | kwargs
    with pytest.raises(InputError):
        generate_dataset(**args)


def test_varied_foliage_adds_dark_gaps_and_glossy_leaves_only_to_the_camera():
    """The varied world's leaf clusters scale the default foliage albedo by 0.3 (a quarter of the 0.12 m
    cells), 1.8 (a sixth) or 1; the default world and the LiDAR reflectance are unchanged."""
    from types import SimpleNamespace

    from i2preg.data.synthetic.materials import _foliage

    points = np.random.default_rng(0).uniform(-20, 20, (3, 20000)).astype(np.float32)
    inst = np.zeros(points.shape[1], np.int64)
    colour = np.array([[0.2], [0.4], [0.1]], np.float32)
    default, varied = (SimpleNamespace(key=5, inst_colour=colour, varied=v) for v in (False, True))
    (albedo, reflectance), (varied_albedo, varied_reflectance) = _foliage(default, inst, points), _foliage(varied, inst, points)
    assert np.array_equal(reflectance, varied_reflectance)
    ratio = (varied_albedo / albedo)[1]
    assert np.allclose(varied_albedo / albedo, ratio, rtol=1e-6)  # one factor for the three channels
    for factor, share in ((0.3, 0.25), (1.8, 1 / 6), (1.0, 1 - 0.25 - 1 / 6)):
        assert abs(np.isclose(ratio, factor, rtol=1e-6).mean() - share) < 0.02
