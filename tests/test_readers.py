"""Users' files: every point-cloud, calibration and image format written here byte by byte and read
back exactly; each bad file gives a one-line InputError naming it; the real sample frames."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from i2preg.data.kitti import read_calibration, read_points
from i2preg.data.readers import (
    lzf_decompress,
    read_calibration_file,
    read_image_file,
    read_point_cloud,
    undistort_image,
)
from i2preg.errors import InputError
from i2preg.geometry import project_pose

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

XYZ = (np.arange(21, dtype=np.float32).reshape(7, 3) - 10) * np.float32(1.25)
INTENSITY = np.arange(7, dtype=np.float32) * 3


def expect_error(path, *args, **kwargs):
    """The reader's InputError: one line that names the file."""
    reader = kwargs.pop("reader", read_point_cloud)
    with pytest.raises(InputError) as info:
        reader(path, *args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and Path(path).name in message, message
    return message


def check_cloud(path, with_intensity=True):
    points, intensity = read_point_cloud(path)
    assert points.dtype == np.float32 and points.shape == (7, 3)
    np.testing.assert_array_equal(points, XYZ)
    if with_intensity:
        assert intensity.dtype == np.float32
        np.testing.assert_array_equal(intensity, INTENSITY)
    else:
        assert intensity is None


# ---------------------------------------------------------------------------------------------
# Raw .bin, NPY, NPZ
# ---------------------------------------------------------------------------------------------


def test_kitti_and_nuscenes_bin(tmp_path):
    np.c_[XYZ, INTENSITY].astype(np.float32).tofile(tmp_path / "000000.bin")
    check_cloud(tmp_path / "000000.bin")
    ring = np.arange(7, dtype=np.float32)
    np.c_[XYZ, INTENSITY, ring].astype(np.float32).tofile(tmp_path / "sweep.pcd.bin")
    check_cloud(tmp_path / "sweep.pcd.bin")
    # A plain .bin of 5-float records (140 bytes: not a multiple of 16) is read as nuScenes.
    np.c_[XYZ, INTENSITY, ring].astype(np.float32).tofile(tmp_path / "renamed.bin")
    check_cloud(tmp_path / "renamed.bin")


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "xyz.npy", XYZ.astype(np.float64))
    check_cloud(tmp_path / "xyz.npy", with_intensity=False)
    np.save(tmp_path / "xyzi.npy", np.c_[XYZ, INTENSITY])
    check_cloud(tmp_path / "xyzi.npy")
    np.savez(tmp_path / "keyed.npz", points=np.c_[XYZ, INTENSITY], colours=np.zeros((7, 3)))
    check_cloud(tmp_path / "keyed.npz")
    np.savez_compressed(tmp_path / "only.npz", XYZ)
    check_cloud(tmp_path / "only.npz", with_intensity=False)


# ---------------------------------------------------------------------------------------------
# PCD
# ---------------------------------------------------------------------------------------------

# (name, TYPE, SIZE, COUNT): x, y, z and intensity among fields that must be skipped.
PCD_LAYOUTS = {
    "float32": [("x", "F", 4, 1), ("y", "F", 4, 1), ("z", "F", 4, 1), ("intensity", "F", 4, 1)],
    "mixed": [("_", "U", 1, 3), ("x", "F", 8, 1), ("normal", "F", 4, 3), ("y", "F", 8, 1), ("z", "F", 8, 1),
              ("ring", "U", 2, 1), ("reflectance", "U", 2, 1), ("t", "I", 8, 1), ("_", "I", 1, 1)],
    "no_intensity": [("x", "F", 4, 1), ("y", "F", 4, 1), ("z", "F", 4, 1), ("label", "I", 4, 2)],
}


def pcd_columns(layout):
    """Per field, its (7, COUNT) values in the field's dtype."""
    values = {"x": XYZ[:, 0], "y": XYZ[:, 1], "z": XYZ[:, 2], "intensity": INTENSITY, "reflectance": INTENSITY}
    columns = []
    for index, (name, kind, size, count) in enumerate(layout):
        dtype = np.dtype(f"<{ {'F': 'f', 'U': 'u', 'I': 'i'}[kind]}{size}")
        column = values[name][:, None] if name in values else np.arange(7 * count).reshape(7, count) + index
        columns.append(np.asarray(column).astype(dtype))
    return columns


def pcd_header(layout, mode, points=7):
    return (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(f[0] for f in layout)}\nSIZE {' '.join(str(f[2]) for f in layout)}\n"
        f"TYPE {' '.join(f[1] for f in layout)}\nCOUNT {' '.join(str(f[3]) for f in layout)}\n"
        f"WIDTH {points}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {mode}\n"
    ).encode()


def lzf_literals(raw):
    """Valid LZF made of literal runs only (control byte n - 1, then n <= 32 bytes)."""
    return b"".join(bytes([len(raw[i : i + 32]) - 1]) + raw[i : i + 32] for i in range(0, len(raw), 32))


def write_pcd(path, layout, mode):
    columns = pcd_columns(layout)
    if mode == "ascii":
        rows = np.concatenate([c.astype(np.float64) for c in columns], axis=1)
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows).encode()
    elif mode == "binary":
        record = np.dtype([(f"f{i}", c.dtype, (c.shape[1],)) for i, c in enumerate(columns)])
        table = np.zeros(7, record)
        for i, c in enumerate(columns):
            table[f"f{i}"] = c
        body = table.tobytes()
    else:  # binary_compressed: each field's values for all points, field after field
        raw = b"".join(c.tobytes() for c in columns)
        compressed = lzf_literals(raw)
        body = np.array([len(compressed), len(raw)], "<u4").tobytes() + compressed
    path.write_bytes(pcd_header(layout, mode) + body)
    return path


@pytest.mark.parametrize("mode", ["ascii", "binary", "binary_compressed"])
@pytest.mark.parametrize("layout", sorted(PCD_LAYOUTS))
def test_pcd(tmp_path, mode, layout):
    check_cloud(write_pcd(tmp_path / "cloud.pcd", PCD_LAYOUTS[layout], mode), with_intensity=layout != "no_intensity")


def test_lzf_back_references():
    # "abc" literal, then a 3-byte copy at distance 3; "a" then an overlapping 12-byte run at distance 1.
    assert lzf_decompress(b"\x02abc" + bytes([1 << 5, 2]), 6) == b"abcabc"
    assert lzf_decompress(b"\x00a" + bytes([7 << 5, 3, 0]), 13) == b"a" * 13


# ---------------------------------------------------------------------------------------------
# PLY
# ---------------------------------------------------------------------------------------------


def write_ply(path, fmt):
    header = (
        f"ply\nformat {fmt} 1.0\ncomment written by the test\nelement camera 1\nproperty float focal\n"
        "element vertex 7\nproperty double x\nproperty float y\nproperty float z\nproperty uchar red\n"
        "property float intensity\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    if fmt == "ascii":
        rows = "".join(f"{x!r} {y!r} {z!r} 7 {i!r}\n" for (x, y, z), i in zip(XYZ.tolist(), INTENSITY.tolist()))
        body = f"700.0\n{rows}3 0 1 2\n".encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        record = np.dtype([("x", order + "f8"), ("y", order + "f4"), ("z", order + "f4"), ("red", "u1"),
                           ("intensity", order + "f4")])
        table = np.zeros(7, record)
        table["x"], table["y"], table["z"], table["red"], table["intensity"] = *XYZ.T, 7, INTENSITY
        face = bytes([3]) + np.array([0, 1, 2], order + "i4").tobytes()
        body = np.array([700.0], order + "f4").tobytes() + table.tobytes() + face
    path.write_bytes(header + body)
    return path


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply(tmp_path, fmt):
    check_cloud(write_ply(tmp_path / "mesh.ply", fmt))


# ---------------------------------------------------------------------------------------------
# Bad point clouds
# ---------------------------------------------------------------------------------------------


def test_bad_point_clouds(tmp_path):
    (tmp_path / "short.bin").write_bytes(bytes(17))
    assert "truncated" in expect_error(tmp_path / "short.bin")
    (tmp_path / "short.pcd.bin").write_bytes(bytes(24))
    assert "multiple of 20" in expect_error(tmp_path / "short.pcd.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    assert "empty" in expect_error(tmp_path / "empty.bin")
    (tmp_path / "cloud.xyz").write_text("1 2 3\n")
    assert "unknown point-cloud format" in expect_error(tmp_path / "cloud.xyz")
    assert "no such file" in expect_error(tmp_path / "missing.pcd")

    layout = PCD_LAYOUTS["float32"]
    full = write_pcd(tmp_path / "full.pcd", layout, "binary").read_bytes()
    (tmp_path / "cut.pcd").write_bytes(full[:-5])
    assert "truncated" in expect_error(tmp_path / "cut.pcd")
    text = write_pcd(tmp_path / "full_ascii.pcd", layout, "ascii").read_bytes()
    (tmp_path / "cut_ascii.pcd").write_bytes(text[: text.rindex(b"\n", 0, -1)])
    assert "truncated" in expect_error(tmp_path / "cut_ascii.pcd")
    packed = write_pcd(tmp_path / "full_packed.pcd", layout, "binary_compressed").read_bytes()
    (tmp_path / "cut_packed.pcd").write_bytes(packed[:-3])
    assert "truncated" in expect_error(tmp_path / "cut_packed.pcd")
    (tmp_path / "no_z.pcd").write_bytes(pcd_header([("x", "F", 4, 1), ("y", "F", 4, 1)], "binary") + bytes(56))
    assert "no z field" in expect_error(tmp_path / "no_z.pcd")
    (tmp_path / "none.pcd").write_bytes(pcd_header(layout, "ascii", points=0))
    assert "empty" in expect_error(tmp_path / "none.pcd")
    (tmp_path / "headless.pcd").write_bytes(b"1 2 3\n")
    assert "not a PCD file" in expect_error(tmp_path / "headless.pcd")

    ply = write_ply(tmp_path / "full.ply", "binary_little_endian").read_bytes()
    (tmp_path / "cut.ply").write_bytes(ply[: ply.index(b"end_header\n") + 11 + 40])
    assert "truncated" in expect_error(tmp_path / "cut.ply")
    (tmp_path / "flat.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                                        b"property float y\nend_header\n1 2\n")
    assert "no z field" in expect_error(tmp_path / "flat.ply")

    np.save(tmp_path / "flat.npy", np.zeros((5, 2)))
    assert "shape (5, 2)" in expect_error(tmp_path / "flat.npy")
    np.savez(tmp_path / "many.npz", a=np.zeros((5, 3)), b=np.zeros((5, 3)))
    assert "no 'points' array" in expect_error(tmp_path / "many.npz")
    np.save(tmp_path / "void.npy", np.full((4, 4), np.nan))
    assert "NaN or inf in all 4 points" in expect_error(tmp_path / "void.npy")


def test_a_bin_of_other_bytes_is_refused_by_its_coordinates(tmp_path):
    """Any file of 100 bytes parses as five nuScenes records: bytes that are no point cloud give coordinates far
    beyond any sensor's reach, refused in one line that names the file and the layout it was read in (before,
    they overflowed the voxel grid and registered to a NaN pose)."""
    records = np.c_[XYZ[:5], INTENSITY[:5], np.zeros(5)].astype("<f4")
    records[3, 1] = 3.0e7
    (tmp_path / "junk.bin").write_bytes(records.tobytes())
    message = expect_error(tmp_path / "junk.bin")
    assert message == (f"{tmp_path / 'junk.bin'}: coordinates reach 3e+07 m, beyond 100,000 m (read as nuScenes: "
                       "float32 x, y, z, intensity, ring): not a cloud in metres about its sensor")
    records[3, 1] = 9.0e4
    (tmp_path / "far.bin").write_bytes(records.tobytes())
    assert read_point_cloud(tmp_path / "far.bin")[0][3, 1] == np.float32(9.0e4)


def test_a_bin_is_read_in_the_layout_its_values_fit(tmp_path):
    """A plain .bin whose size is a multiple of both 16 and 20 bytes: a nuScenes sweep (x, y, z, intensity, ring)
    is read as nuScenes, since read as KITTI its fourth column holds negative coordinates; records of another size
    (7 floats: x, y, z, intensity, ring, time, 0) fit neither layout and are refused, with what each reading found."""
    xyz = np.c_[np.linspace(-20, 20, 8), np.full(8, 1.5), np.linspace(5, -30, 8)]
    intensity, ring = np.arange(8) * 30.0, np.arange(8) % 32
    np.c_[xyz, intensity, ring].astype("<f4").tofile(tmp_path / "sweep.bin")  # 160 bytes
    points, read_intensity = read_point_cloud(tmp_path / "sweep.bin")
    np.testing.assert_array_equal(points, xyz.astype(np.float32))
    np.testing.assert_array_equal(read_intensity, intensity.astype(np.float32))
    seven = np.c_[xyz, intensity, ring, np.linspace(0, 0.1, 8), np.zeros(8)]
    np.r_[seven, seven, seven, seven, seven].astype("<f4").tofile(tmp_path / "seven.bin")  # 1,120 bytes
    message = expect_error(tmp_path / "seven.bin")
    assert "in no known layout: read as KITTI" in message and "; read as nuScenes" in message, message
    assert "intensities below zero" in message, message


def test_a_folder_given_as_a_file_is_named_as_one(tmp_path):
    (tmp_path / "image.png").write_bytes(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    assert expect_error(tmp_path / "image.png", reader=read_calibration_file).endswith(
        ": not a text calibration file (it holds binary data)")
    assert expect_error(tmp_path).endswith(": is a folder, not a file")
    assert expect_error(tmp_path, reader=read_calibration_file).endswith(": is a folder, not a file")
    assert expect_error(tmp_path, reader=read_image_file).endswith(": is a folder, not a file")


def test_points_holding_nan_or_inf_are_left_out_with_a_warning(tmp_path):
    """Organised clouds mark missing returns with NaN (as PCL writes them): the reader drops those points and
    says how many, in one line naming the file."""
    holes = np.c_[XYZ, INTENSITY]
    holes[2, 0], holes[5, 3] = np.nan, np.inf
    np.save(tmp_path / "holes.npy", holes)
    with pytest.warns(UserWarning) as caught:
        points, intensity = read_point_cloud(tmp_path / "holes.npy")
    assert [str(w.message) for w in caught] == [f"{tmp_path / 'holes.npy'}: left out 2 of 7 points holding NaN or inf"]
    keep = [0, 1, 3, 4, 6]
    np.testing.assert_array_equal(points, XYZ[keep].astype(np.float32))
    np.testing.assert_array_equal(intensity, INTENSITY[keep].astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

K = np.array([[720.0, 0.0, 610.0], [0.0, 715.0, 180.0], [0.0, 0.0, 1.0]])
T = np.array([[0.0, -1.0, 0.0, 0.05], [0.0, 0.0, -1.0, -0.3], [1.0, 0.0, 0.0, -0.4], [0.0, 0.0, 0.0, 1.0]])


def kitti_line(key, matrix):
    return f"{key}: " + " ".join(f"{v:.12e}" for v in np.ravel(matrix)) + "\n"


def test_kitti_calibrations(tmp_path):
    P2, P3 = np.c_[K, [45.0, -0.3, 0.005]], np.c_[K, [-330.0, 2.0, 0.003]]
    odometry = tmp_path / "calib.txt"
    odometry.write_text(kitti_line("P0", np.c_[K, np.zeros(3)]) + kitti_line("P2", P2) + kitti_line("P3", P3)
                        + kitti_line("Tr", T[:3]))
    obj = tmp_path / "000000.txt"
    obj.write_text(kitti_line("P2", P2) + kitti_line("P3", P3) + kitti_line("R0_rect", np.eye(3))
                   + kitti_line("Tr_velo_to_cam", T[:3]))
    for path in (odometry, obj):
        for camera in (2, 3):
            calibration = read_calibration_file(path, camera=camera)
            expected = read_calibration(path, cameras=(camera,))[camera]
            np.testing.assert_allclose(calibration.K, expected.K)
            np.testing.assert_allclose(calibration.T_cam_velo, expected.T_cam_velo)
            assert calibration.distortion is None
    expect_error(odometry, extrinsic=odometry, reader=read_calibration_file)


def test_k_and_extrinsic_files(tmp_path):
    np.savetxt(tmp_path / "K.txt", K)
    np.savetxt(tmp_path / "lidar2cam.txt", T)
    calibration = read_calibration_file(tmp_path / "K.txt", extrinsic=tmp_path / "lidar2cam.txt")
    np.testing.assert_array_equal(calibration.K, K)
    np.testing.assert_array_equal(calibration.T_cam_velo, T)
    np.testing.assert_array_equal(read_calibration_file(tmp_path / "K.txt").T_cam_velo, np.eye(4))
    assert "extrinsic goes in its own file" in expect_error(tmp_path / "lidar2cam.txt", reader=read_calibration_file)


def test_yaml_and_json_calibrations(tmp_path):
    (tmp_path / "camera.yaml").write_text(
        f"K: {K.tolist()}\ndistortion: [-0.2, 0.05, 0.001, 0.0, 0.0]\nT_cam_lidar: {T.tolist()}\n"
    )
    calibration = read_calibration_file(tmp_path / "camera.yaml")
    np.testing.assert_array_equal(calibration.K, K)
    np.testing.assert_array_equal(calibration.T_cam_velo, T)
    np.testing.assert_array_equal(calibration.distortion, [-0.2, 0.05, 0.001, 0.0, 0.0])
    (tmp_path / "camera.json").write_text(json.dumps({"fx": 720.0, "fy": 715.0, "cx": 610.0, "cy": 180.0}))
    calibration = read_calibration_file(tmp_path / "camera.json")
    np.testing.assert_array_equal(calibration.K, K)
    np.testing.assert_array_equal(calibration.T_cam_velo, np.eye(4))


def test_bad_calibrations(tmp_path):
    (tmp_path / "typo.yaml").write_text(f"K: {K.tolist()}\nT_lidar_cam: {T.tolist()}\n")
    assert "unknown key(s) T_lidar_cam" in expect_error(tmp_path / "typo.yaml", reader=read_calibration_file)
    (tmp_path / "skewed.yaml").write_text(f"K: {K.tolist()}\nT_cam_lidar: {(T[:3] * 2).tolist()}\n")
    assert "not a rotation" in expect_error(tmp_path / "skewed.yaml", reader=read_calibration_file)
    (tmp_path / "flat.txt").write_text("720 0 610 0 0 180 0 0 1\n")
    assert "not an intrinsics matrix" in expect_error(tmp_path / "flat.txt", reader=read_calibration_file)
    (tmp_path / "words.txt").write_text("fx fy\n")
    assert "not a number" in expect_error(tmp_path / "words.txt", reader=read_calibration_file)


def test_undistort_image_moves_points_to_the_pinhole_position():
    K_small = np.array([[60.0, 0.0, 50.0], [0.0, 60.0, 40.0], [0.0, 0.0, 1.0]])
    distortion = np.array([-0.3, 0.0, 0.0, 0.0])
    image = np.zeros((81, 101, 3), np.uint8)
    distorted = np.array([[50.0, 40.0], [80.0, 60.0]])  # the principal point, and one off centre
    for u, v in distorted:
        image[int(v) - 1 : int(v) + 2, int(u) - 1 : int(u) + 2] = 255
    undistorted, K_new = undistort_image(image, K_small, distortion)
    np.testing.assert_array_equal(K_new, K_small)
    expected = cv2.undistortPoints(distorted[:, None], K_small, distortion, P=K_small)[:, 0]
    for eu, ev in expected:  # the centroid of each dot in the undistorted image
        top, left = int(ev) - 6, int(eu) - 6
        window = undistorted[top : top + 13, left : left + 13, 0].astype(float)
        rows, cols = np.mgrid[top : top + 13, left : left + 13]
        centre = np.array([(cols * window).sum(), (rows * window).sum()]) / window.sum()
        assert np.hypot(*(centre - [eu, ev])) < 1.0
    assert np.hypot(*(expected[1] - distorted[1])) > 3  # the off-centre point did move
    assert undistort_image(image, K_small, None)[0] is image


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def test_images(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 20, 90
    assert cv2.imwrite(str(tmp_path / "frame.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image_file(tmp_path / "frame.png"), rgb)
    assert cv2.imwrite(str(tmp_path / "frame.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.abs(read_image_file(tmp_path / "frame.jpg").astype(int) - rgb).max() <= 3
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert "not a readable image" in expect_error(tmp_path / "broken.png", reader=read_image_file)
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "not a readable image" in expect_error(tmp_path / "empty.jpg", reader=read_image_file)


# ---------------------------------------------------------------------------------------------
# The real sample frames
# ---------------------------------------------------------------------------------------------


def test_shared_nuscenes_sample_projects_into_cam_front():
    folder = SHARED / "nuscenes_sample"
    if not folder.is_dir():
        pytest.skip(f"no shared nuScenes sample at {folder}")
    points, intensity = read_point_cloud(next(folder.glob("*LIDAR_TOP*.pcd.bin")))
    assert points.shape == (34688, 3) and intensity.shape == (34688,)
    calibration = read_calibration_file(folder / "CAM_FRONT_K.txt", extrinsic=folder / "CAM_FRONT_lidar2cam.txt")
    image = read_image_file(next(folder.glob("*CAM_FRONT*.jpg")))
    assert image.shape == (900, 1600, 3)
    in_view = project_pose(points.astype(np.float64), calibration.T_cam_velo, calibration.K, *image.shape[:2])[2]
    print(f"nuScenes sample: {int(in_view.sum())} of {len(points)} points project into CAM_FRONT")
    assert in_view.sum() >= 2000


def test_shared_kitti_sample_reads_as_the_kitti_reader():
    folder = SHARED / "kitti_object_sample" / "training"
    if not folder.is_dir():
        pytest.skip(f"no shared KITTI sample at {folder}")
    points, intensity = read_point_cloud(folder / "velodyne" / "000001.bin")
    scan = read_points(folder / "velodyne" / "000001.bin")
    np.testing.assert_array_equal(points, scan[:, :3])
    np.testing.assert_array_equal(intensity, scan[:, 3])
    calibration = read_calibration_file(folder / "calib" / "000001.txt")
    expected = read_calibration(folder / "calib" / "000001.txt", cameras=(2,))[2]
    np.testing.assert_array_equal(calibration.K, expected.K)
    np.testing.assert_array_equal(calibration.T_cam_velo, expected.T_cam_velo)
