"""nuScenes preparation on a tiny tree in the devkit's schema, built from a known world: kept and
dropped pairs, accumulated and cleaned points, the 320 x 160 image and the ground-truth projection."""

import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from i2preg.config import load_config
from i2preg.data.kitti import read_calibration
from i2preg.data.nuscenes import prepare_nuscenes, quaternion_matrix
from i2preg.data.pairs import build_dataset
from i2preg.errors import InputError
from i2preg.geometry import invert_transform, make_transform, rot_z, transform_points

K_FULL = np.array([[1260.0, 0.0, 800.0], [0.0, 1260.0, 450.0], [0.0, 0.0, 1.0]])
LIDAR_TO_EGO = make_transform(rot_z(-np.pi / 2), np.array([0.95, 0.0, 1.85]))  # x right, y forward, z up
CAM_TO_EGO = make_transform(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), np.array([1.7, 0.02, 1.5]))
EGO_POINTS = np.array([[0.3, 1.0, -1.0], [-0.5, -2.0, -1.2]])  # LiDAR frame, inside the ego box
# Global points ahead of the road (1 m grid), dealt round-robin to LiDAR scans 0-4 of scene A.
FRONT = np.stack(np.meshgrid(np.arange(20.0, 30.0), np.arange(-4.0, 5.0), [0.5, 1.5, 2.5], indexing="ij"), -1)
FRONT = FRONT.reshape(-1, 3)
SETTINGS = {"sweeps_per_side": 1, "sweep_stride": 1, "min_points_in_view": 60}


def ego_pose(t, shift=0.0):
    """Ego -> global at time t (s): driving along x at 10 m/s while turning slowly."""
    return make_transform(rot_z(0.02 + 0.05 * t), np.array([10.0 * t + shift, 0.5, 0.0]))


def wxyz(T):
    x, y, z, w = Rotation.from_matrix(T[:3, :3]).as_quat()
    return [w, x, y, z]


def front_points(scan):
    return FRONT[scan::5] if scan < 5 else np.zeros((0, 3))


def behind_points(scan):
    return np.array([[-20.0 + 2 * j, 6.0 + scan, 1.0] for j in range(3)])


class Tree:
    """A nuScenes ROOT with tables of ``version`` written by ``save``."""

    def __init__(self, root, version="v1.0-mini"):
        self.root, self.version = root, version
        self.tables = {name: [] for name in ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose",
                                             "sensor", "log")}
        self.add("log", token="log", logfile="n015-test", vehicle="n015", date_captured="2018-07-24",
                 location="singapore-onenorth")
        sensors = (("LIDAR_TOP", "lidar", LIDAR_TO_EGO, []), ("CAM_FRONT", "camera", CAM_TO_EGO, K_FULL.tolist()),
                   ("RADAR_FRONT", "radar", LIDAR_TO_EGO, []))
        for channel, modality, T, K in sensors:
            self.add("sensor", token=f"sensor-{channel}", channel=channel, modality=modality)
            self.add("calibrated_sensor", token=f"calib-{channel}", sensor_token=f"sensor-{channel}",
                     translation=T[:3, 3].tolist(), rotation=wxyz(T), camera_intrinsic=K)

    def add(self, table, **record):
        record.setdefault("token", f"{table}-{len(self.tables[table])}")
        self.tables[table].append(record)
        return record

    def sample_data(self, channel, sample, t, key, pose, filename):
        ego = self.add("ego_pose", timestamp=int(t * 1e6), rotation=wxyz(pose), translation=pose[:3, 3].tolist())
        return self.add("sample_data", sample_token=sample["token"], ego_pose_token=ego["token"],
                        calibrated_sensor_token=f"calib-{channel}", timestamp=int(t * 1e6),
                        fileformat=filename.rsplit(".", 1)[-1], is_key_frame=key, height=900 if "CAM" in channel else 0,
                        width=1600 if "CAM" in channel else 0, filename=filename, prev="", next="")

    def scene(self, name, description, lidar_keys, num_scans, t0, far_camera=()):
        """A scene of ``num_scans`` LiDAR scans at 20 Hz; scans ``lidar_keys`` are keyframes, each with
        a CAM_FRONT image 10 ms later (its ego pose shifted by 15 m for keyframes in ``far_camera``)."""
        scene = self.add("scene", log_token="log", name=name, description=description, nbr_samples=len(lidar_keys))
        samples, chain, cameras = [], [], []
        for scan in range(num_scans):
            t = t0 + 0.05 * scan
            key = scan in lidar_keys
            if key:
                samples.append(self.add("sample", timestamp=int(t * 1e6), scene_token=scene["token"], prev="", next=""))
            folder = "samples" if key else "sweeps"
            filename = f"{folder}/LIDAR_TOP/{name}__LIDAR_TOP__{scan}.pcd.bin"
            chain.append(self.sample_data("LIDAR_TOP", samples[-1], t, key, ego_pose(t), filename))
            self.write_scan(filename, ego_pose(t), scan)
            if key:
                shift = 15.0 if scan in far_camera else 0.0
                filename = f"samples/CAM_FRONT/{name}__CAM_FRONT__{scan}.jpg"
                pose = ego_pose(t + 0.01, shift)
                cameras.append(self.sample_data("CAM_FRONT", samples[-1], t + 0.01, True, pose, filename))
                self.write_image(filename)
        radar = self.sample_data("RADAR_FRONT", samples[0], t0, True, ego_pose(t0), "samples/RADAR_FRONT/missing.pcd")
        for records in (samples, chain, cameras, [radar]):
            for a, b in zip(records, records[1:]):
                a["next"], b["prev"] = b["token"], a["token"]
        scene["first_sample_token"], scene["last_sample_token"] = samples[0]["token"], samples[-1]["token"]
        return chain, cameras

    def write_scan(self, filename, pose, scan):
        world = np.concatenate([front_points(scan), behind_points(scan)])
        sensor = transform_points(invert_transform(pose @ LIDAR_TO_EGO), world)
        points = np.concatenate([sensor, EGO_POINTS])
        records = np.c_[points, np.full(len(points), 100.0 + scan), np.arange(len(points)) % 32]
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        records.astype(np.float32).tofile(path)

    def write_image(self, filename):
        """1600 x 900: the 100 rows the protocol cuts are white, the rest grey."""
        bgr = np.full((900, 1600, 3), 90, np.uint8)
        bgr[:100] = 255
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), bgr)

    def save(self):
        folder = self.root / self.version
        folder.mkdir(parents=True, exist_ok=True)
        for name, records in self.tables.items():
            (folder / f"{name}.json").write_text(json.dumps(records))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Scene A (train): keyframes at scans 0, 2, 4, 6 of 7; keyframe 2's camera is 15 m away and scans
    5-6 see nothing ahead. Scene B (test): one keyframe. Scene C (train): at night."""
    root = tmp_path_factory.mktemp("nuscenes")
    tree = Tree(root)
    chain, cameras = tree.scene("scene-0061", "Wait at intersection, peds", [0, 2, 4, 6], 7, 0.0, far_camera=[2])
    tree.scene("scene-0103", "Many peds, parked cars", [0], 2, 1.0)
    tree.scene("scene-1077", "Night, big street, bus stop", [0], 1, 2.0)
    tree.save()
    out = root / "prepared"
    summary = prepare_nuscenes(root, "v1.0-mini", out, SETTINGS)
    return out, summary, chain, cameras


def test_kept_and_dropped_pairs(prepared):
    out, summary, _, _ = prepared
    assert summary.splits == {"train": ["scene-0061"], "test": ["scene-0103"]}
    assert summary.night_scenes == ["scene-1077"] and not (out / "sequences" / "scene-1077").exists()
    assert (summary.pairs, summary.no_camera, summary.few_points) == (3, 1, 1)
    scene = out / "sequences" / "scene-0061"
    assert sorted(p.name for p in (scene / "velodyne").iterdir()) == ["000000.bin", "000001.bin"]
    assert sorted(p.name for p in (scene / "image_2").iterdir()) == ["000000.png", "000001.png"]
    assert (out / "train.txt").read_text() == "scene-0061\n" and (out / "test.txt").read_text() == "scene-0103\n"


def test_sweeps_merged_and_ego_points_removed(prepared):
    out, _, _, _ = prepared
    velodyne = out / "sequences" / "scene-0061" / "velodyne"
    for frame, scans in (("000000", [0, 1]), ("000001", [3, 4, 5])):  # keyframes 0 and 4 with +-1 sweep
        stored = np.fromfile(velodyne / f"{frame}.bin", np.float32).reshape(-1, 4)
        assert len(stored) == sum(len(front_points(s)) + len(behind_points(s)) for s in scans)
        assert sorted(set(np.round(stored[:, 3] * 255).astype(int))) == [100 + s for s in scans]


def test_image_cut_and_scaled(prepared):
    out, _, _, _ = prepared
    image = cv2.imread(str(out / "sequences" / "scene-0061" / "image_2" / "000000.png"))
    assert image.shape == (160, 320, 3)
    assert np.abs(image[2:].astype(int) - 90).max() <= 4  # the white rows are gone (JPEG blur aside)


def test_ground_truth_projection(prepared):
    """A global point seen by sweep 3 lands, in frame 000001 (keyframe scan 4), where the camera of
    that keyframe sees it at its own timestamp, on the pixel of the cut and scaled image."""
    out, _, chain, cameras = prepared
    folder = out / "sequences" / "scene-0061"
    calibration = read_calibration(folder / "calib.txt", cameras=(2,))[2]
    np.testing.assert_array_equal(calibration.T_cam_velo, np.eye(4))
    world = front_points(3)[0]
    camera_time = cameras[2]["timestamp"] / 1e6
    expected = transform_points(invert_transform(ego_pose(camera_time) @ CAM_TO_EGO), world[None])[0]
    stored = np.fromfile(folder / "velodyne" / "000001.bin", np.float32).reshape(-1, 4)
    nearest = stored[np.argmin(np.linalg.norm(stored[:, :3] - expected, axis=1))]
    np.testing.assert_allclose(nearest[:3], expected, atol=1e-4)
    assert nearest[3] == np.float32(103 / 255)
    u, v, w = K_FULL @ expected
    full = np.array([u / w, v / w - 100])  # full-resolution pixel, top 100 rows cut
    uvw = calibration.K @ nearest[:3]
    np.testing.assert_allclose(uvw[:2] / uvw[2], 0.2 * (full + 0.5) - 0.5, atol=1e-3)


def test_prepared_pairs_serve_the_standard_protocol(prepared):
    out, _, _, _ = prepared
    cfg = load_config(out / "nuscenes.yaml", {"data": {"num_points": 512}})
    assert cfg["data"]["image_scale"] == 1.0 and cfg["data"]["crop"] == [160, 320]
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert (len(train), len(test)) == (2, 1)
    sample = test[0]
    assert sample["image"].shape == (3, 160, 320) and sample["points"].shape == (512, 3)
    K = read_calibration(out / "sequences" / "scene-0103" / "calib.txt", cameras=(2,))[2].K
    np.testing.assert_allclose(sample["K"].numpy(), K, rtol=1e-6)


def test_resume_and_bad_input(prepared, tmp_path):
    out, summary, _, _ = prepared
    again = prepare_nuscenes(out.parent, "v1.0-mini", out, SETTINGS)
    assert (again.splits, again.pairs) == (summary.splits, summary.pairs)
    with pytest.raises(InputError, match="v1.0-trainval"):
        prepare_nuscenes(tmp_path, "v1.0-trainval", tmp_path / "out")
    with pytest.raises(InputError, match="unknown nuScenes setting"):
        prepare_nuscenes(tmp_path, "v1.0-mini", tmp_path / "out", {"sweeps": 3})


def test_quaternion_matrix_matches_scipy():
    R = Rotation.from_euler("zyx", [0.3, -0.2, 1.1]).as_matrix()
    np.testing.assert_allclose(quaternion_matrix(wxyz(make_transform(R, np.zeros(3)))), R, atol=1e-12)
