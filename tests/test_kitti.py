"""KITTI readers on files written byte by byte in the real formats, and on the real sample frames."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from i2preg.data.kitti import KittiObject, KittiOdometry, read_calib_file, read_points
from i2preg.errors import InputError
from i2preg.geometry import project_points, project_pose, transform_points

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kitti_object_sample" / "training"

K = [[700.0, 0.0, 600.0], [0.0, 700.0, 180.0], [0.0, 0.0, 1.0]]
P2 = np.c_[K, [45.5, -0.35, 0.005]]
P3 = np.c_[K, [-334.0, 2.3, 0.003]]
TR = np.array([[0.0, -1.0, 0.0, 0.01], [0.0, 0.0, -1.0, -0.06], [1.0, 0.0, 0.0, -0.33]])
R0 = np.array([[0.9999, 0.0101, -0.0085], [-0.0101, 0.9999, -0.0040], [0.0085, 0.0041, 0.9999]])
POSES = np.arange(2 * 12, dtype=np.float64).reshape(2, 12) / 10


def line(key, matrix):
    return f"{key}: " + " ".join(f"{v:.12e}" for v in np.ravel(matrix)) + "\n"


def scan(frame):
    return (np.arange(40, dtype=np.float32).reshape(10, 4) + 100 * frame) / 7


def colour_image(frame, camera):
    """(4, 6, 3) uint8 RGB with distinct channels."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10 + frame, 20 + camera, 200
    return rgb


def write_png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def odometry(tmp_path):
    """ROOT with sequence 03 (2 frames, both cameras, poses in ROOT/poses/03.txt)."""
    folder = tmp_path / "sequences" / "03"
    for frame in range(2):
        (folder / "velodyne").mkdir(parents=True, exist_ok=True)
        scan(frame).tofile(folder / "velodyne" / f"{frame:06d}.bin")
        for camera in (2, 3):
            write_png(folder / f"image_{camera}" / f"{frame:06d}.png", colour_image(frame, camera))
    (folder / "calib.txt").write_text(
        line("P0", np.c_[K, np.zeros(3)]) + line("P1", np.c_[K, [-380.0, 0, 0]]) + line("P2", P2)
        + line("P3", P3) + line("Tr", TR)
    )
    (tmp_path / "poses").mkdir()
    (tmp_path / "poses" / "03.txt").write_text("".join(" ".join(map(str, row)) + "\n" for row in POSES))
    return tmp_path


@pytest.fixture
def object_layout(tmp_path):
    """ROOT in the object layout: one frame, image_2 only, calib with R0_rect."""
    (tmp_path / "velodyne").mkdir()
    scan(0).tofile(tmp_path / "velodyne" / "000007.bin")
    write_png(tmp_path / "image_2" / "000007.png", colour_image(7, 2))
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "000007.txt").write_text(
        line("P0", np.c_[K, np.zeros(3)]) + line("P1", np.c_[K, [-380.0, 0, 0]]) + line("P2", P2)
        + line("P3", P3) + line("R0_rect", R0) + line("Tr_velo_to_cam", TR) + line("Tr_imu_to_velo", TR) + "\n"
    )
    return tmp_path


def kitti_pixels(P, T_rect_velo, points):
    """The KITTI chain P (3, 4) @ T_rect_velo (3, 4, padded) @ [x, y, z, 1] -> pixels (N, 2)."""
    h = np.c_[points, np.ones(len(points))] @ (P @ np.r_[T_rect_velo, [[0, 0, 0, 1]]]).T
    return h[:, :2] / h[:, 2:]


def folded_pixels(calibration, points):
    """K @ (T_cam_velo @ p)[:3] -> pixels (N, 2)."""
    return project_points(transform_points(calibration.T_cam_velo, points), calibration.K)[0]


def points_ahead():
    return scan(0)[:, :3].astype(np.float64) + [5, 0, 0]  # velodyne x is forward


def test_odometry_reads_exact_values(odometry):
    frames = KittiOdometry(odometry, ["03"])
    assert len(frames) == 2 and frames.frames == [("03", 0), ("03", 1)]
    for i in range(2):
        np.testing.assert_array_equal(frames.points(i), scan(i))
        assert frames.points(i).dtype == np.float32
        for camera in (2, 3):
            np.testing.assert_array_equal(frames.image(i, camera), colour_image(i, camera))
        pose = frames.pose(i)
        np.testing.assert_array_equal(pose[:3], POSES[i].reshape(3, 4))
        np.testing.assert_array_equal(pose[3], [0, 0, 0, 1])
    calibration = frames.calibration(0)
    points = points_ahead()
    for camera, P in ((2, P2), (3, P3)):
        np.testing.assert_array_equal(calibration[camera].K, np.array(K))
        np.testing.assert_allclose(folded_pixels(calibration[camera], points), kitti_pixels(P, TR, points), atol=1e-9)


def test_odometry_poses_beside_the_sequence_and_optional(odometry):
    (odometry / "poses" / "03.txt").rename(odometry / "sequences" / "03" / "poses.txt")
    np.testing.assert_array_equal(KittiOdometry(odometry, [3]).pose(1)[:3], POSES[1].reshape(3, 4))
    (odometry / "sequences" / "03" / "poses.txt").unlink()
    assert KittiOdometry(odometry, ["03"]).pose(0) is None


def test_object_layout_folds_rectification_and_baseline(object_layout):
    frames = KittiObject(object_layout)
    assert [frame.frame for frame in frames.frames] == [7]
    np.testing.assert_array_equal(frames.image(0, 2), colour_image(7, 2))
    np.testing.assert_array_equal(frames.points(0), scan(0))
    R0_4x4 = np.eye(4)
    R0_4x4[:3, :3] = R0
    T_rect_velo = (R0_4x4 @ np.r_[TR, [[0, 0, 0, 1]]])[:3]
    points = points_ahead()
    for camera, P in ((2, P2), (3, P3)):
        pixels = folded_pixels(frames.calibration(0)[camera], points)
        np.testing.assert_allclose(pixels, kitti_pixels(P, T_rect_velo, points), atol=1e-9)
    assert read_calib_file(object_layout / "calib" / "000007.txt")["R0_rect"].shape == (9,)


def replace_line(path, key, text):
    lines = [text if line.startswith(f"{key}:") else line for line in path.read_text().splitlines(keepends=True)]
    path.write_text("".join(lines))


SEQ = Path("sequences") / "03"

# (name, how to break the odometry fixture, file named in the error, raised when opening or loading frame 1)
BAD_INPUTS = [
    ("missing calib", lambda r: (r / SEQ / "calib.txt").unlink(), "calib.txt", "open"),
    ("missing scan", lambda r: (r / SEQ / "velodyne" / "000001.bin").unlink(), "image_2", "open"),
    ("truncated scan", lambda r: (r / SEQ / "velodyne" / "000001.bin").write_bytes(scan(1).tobytes()[:-3]),
     "000001.bin", "load"),
    ("nan in scan", lambda r: np.where(np.arange(40).reshape(10, 4) == 5, np.nan, scan(1)).astype(np.float32)
     .tofile(r / SEQ / "velodyne" / "000001.bin"), "000001.bin", "load"),
    ("inf in scan", lambda r: np.where(np.arange(40).reshape(10, 4) == 5, -np.inf, scan(1)).astype(np.float32)
     .tofile(r / SEQ / "velodyne" / "000001.bin"), "000001.bin", "load"),
    ("empty scan", lambda r: (r / SEQ / "velodyne" / "000001.bin").write_bytes(b""), "000001.bin", "load"),
    ("no Tr", lambda r: replace_line(r / SEQ / "calib.txt", "Tr", ""), "calib.txt", "open"),
    ("no P3", lambda r: replace_line(r / SEQ / "calib.txt", "P3", ""), "calib.txt", "open"),
    ("short P2", lambda r: replace_line(r / SEQ / "calib.txt", "P2", "P2: 1 2 3\n"), "calib.txt", "open"),
    ("long Tr", lambda r: replace_line(r / SEQ / "calib.txt", "Tr", line("Tr", np.zeros(13))), "calib.txt", "open"),
    ("text in calib", lambda r: replace_line(r / SEQ / "calib.txt", "P0", "P0: a b\n"), "calib.txt", "open"),
    ("pose rows", lambda r: (r / "poses" / "03.txt").write_text("1 " * 12 + "\n"), "03.txt", "open"),
    ("pose columns", lambda r: (r / "poses" / "03.txt").write_text(("1 " * 11 + "\n") * 2), "03.txt", "open"),
    ("empty sequence", lambda r: [p.unlink() for p in (r / SEQ / "velodyne").glob("*.bin")], "velodyne", "open"),
    ("extra image", lambda r: write_png(r / SEQ / "image_3" / "000002.png", colour_image(2, 3)), "image_3", "open"),
    ("unreadable image", lambda r: (r / SEQ / "image_2" / "000001.png").write_bytes(b"not a png"),
     "000001.png", "load"),
    ("missing image", lambda r: (r / SEQ / "image_2" / "000001.png").unlink(), "000001.png", "load"),
]


@pytest.mark.parametrize("name, damage, named, when", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise_one_line_input_error(odometry, name, damage, named, when):
    if when == "open":
        damage(odometry)
        with pytest.raises(InputError) as error:
            KittiOdometry(odometry, ["03"])
    else:
        frames = KittiOdometry(odometry, ["03"])
        damage(odometry)
        with pytest.raises(InputError) as error:
            frames.points(1)
            frames.image(1, 2)
    message = str(error.value)
    assert named in message and "\n" not in message, message


def test_unknown_sequence_names_the_ones_the_dataset_holds(odometry):
    with pytest.raises(InputError) as error:
        KittiOdometry(odometry, ["03", "04"])
    assert str(error.value) == (f"{odometry}: no sequence 04 of the 03,04 asked for (it holds 03: eval and compare "
                                "take --sequences, train --set data.SPLIT_sequences)")


def test_object_layout_calib_count_mismatch(object_layout):
    (object_layout / "calib" / "000007.txt").unlink()
    with pytest.raises(InputError, match="calib"):
        KittiObject(object_layout)


def test_read_points_float32_layout(tmp_path):
    values = np.random.default_rng(0).normal(size=(123, 4)).astype(np.float32)
    values.tofile(tmp_path / "x.bin")
    np.testing.assert_array_equal(read_points(tmp_path / "x.bin"), values)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="no real KITTI sample at ../shared/data")
def test_real_frames_project_into_the_image():
    frames = KittiObject(SAMPLE)
    assert len(frames) == 6
    for i in range(len(frames)):
        image, points, calibration = frames.image(i, 2), frames.points(i), frames.calibration(i)[2]
        _, _, inside = project_pose(points[:, :3].astype(np.float64), calibration.T_cam_velo, calibration.K,
                                    *image.shape[:2])
        assert inside.sum() >= 15_000, (frames.frames[i], int(inside.sum()))
