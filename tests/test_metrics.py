"""The protocol metric against a direct transcription of METHOD's formula, and hand-computed cases."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from i2preg.geometry import euler_to_matrix, make_transform
from i2preg.metrics import centre_offsets, format_table, registration_errors, success, summarize, yaw_offsets


def method_formula(T_pred, T_gt):
    """METHOD section 3, written as the peers' code writes it, one pair at a time."""
    P_diff = np.linalg.inv(T_pred) @ T_gt
    rte = np.linalg.norm(P_diff[:3, 3])
    rre = np.sum(np.abs(Rotation.from_matrix(P_diff[:3, :3]).as_euler("xzy", degrees=True)))
    return rte, rre


def random_pose(rng):
    R = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    return make_transform(R, rng.uniform(-20, 20, 3))


def test_matches_method_formula_on_1000_random_pairs():
    rng = np.random.default_rng(0)
    T_pred = np.stack([random_pose(rng) for _ in range(1000)])
    T_gt = np.stack([random_pose(rng) for _ in range(1000)])
    # Half of the pairs close to each other, where the metric matters most.
    for i in range(500):
        delta = make_transform(Rotation.from_rotvec(rng.normal(0, 0.05, 3)).as_matrix(), rng.normal(0, 0.5, 3))
        T_pred[i] = T_gt[i] @ delta
    errors = registration_errors(T_pred, T_gt)
    expected = np.array([method_formula(p, g) for p, g in zip(T_pred, T_gt)])
    np.testing.assert_allclose(errors["rte"], expected[:, 0], atol=1e-6)
    np.testing.assert_allclose(errors["rre"], expected[:, 1], atol=1e-6)


def test_pure_yaw():
    T_gt = np.eye(4)
    T_pred = make_transform(euler_to_matrix(0, math.radians(3.0), 0), np.zeros(3))
    e = registration_errors(T_pred, T_gt)
    assert e["rte"][0] == pytest.approx(0.0, abs=1e-12)
    assert e["rre"][0] == pytest.approx(3.0, abs=1e-9)
    assert e["rre_geodesic"][0] == pytest.approx(3.0, abs=1e-9)


def test_pure_translation():
    T_gt = make_transform(np.eye(3), np.array([1.0, 2.0, 3.0]))
    T_pred = make_transform(np.eye(3), np.array([1.0, 0.0, 3.0]))
    e = registration_errors(T_pred, T_gt)
    assert e["rte"][0] == pytest.approx(2.0, abs=1e-12)
    assert e["rre"][0] == pytest.approx(0.0, abs=1e-9)


def test_translation_error_is_in_the_predicted_frame():
    # Right translation, rotation off by 90 deg about y: P_diff's translation is R_pred^T (t_gt - t_pred).
    t = np.array([4.0, 0.0, 0.0])
    T_gt = make_transform(np.eye(3), t)
    T_pred = make_transform(euler_to_matrix(0, math.pi / 2, 0), np.zeros(3))
    e = registration_errors(T_pred, T_gt)
    assert e["rte"][0] == pytest.approx(4.0, abs=1e-9)
    assert e["rre"][0] == pytest.approx(90.0, abs=1e-9)


def test_roll_and_pitch_euler_sum_exceeds_geodesic():
    # 3 deg about x then 4 deg about z: Euler sum 7 deg, geodesic angle 5 deg (to first order).
    R = Rotation.from_euler("xzy", [3.0, 4.0, 0.0], degrees=True).as_matrix()
    e = registration_errors(np.eye(4), make_transform(R, np.zeros(3)))  # P_diff = R
    assert e["rre"][0] == pytest.approx(7.0, abs=1e-9)
    geodesic = math.degrees(Rotation.from_matrix(R).magnitude())
    assert e["rre_geodesic"][0] == pytest.approx(geodesic, abs=1e-9)
    assert 4.9 < e["rre_geodesic"][0] < 5.1 < e["rre"][0]


def test_acc_thresholds_and_statistics_over_all_pairs():
    errors = {
        "rte": np.array([0.5, 1.99, 2.0, 30.0]),
        "rre": np.array([1.0, 4.99, 1.0, 170.0]),
        "rre_geodesic": np.array([1.0, 4.0, 1.0, 170.0]),
    }
    assert success(errors).tolist() == [True, True, False, False]
    s = summarize(errors)
    assert s["acc"] == pytest.approx(0.5)
    assert s["pairs"] == 4
    assert s["rte_mean"] == pytest.approx(np.mean(errors["rte"]))  # the failure is not left out
    assert s["rte_median"] == pytest.approx(1.995)
    assert summarize(errors, rte_thresh=3.0, rre_thresh=5.0)["acc"] == pytest.approx(0.75)
    table = format_table({"ICL": s})
    std = math.sqrt(np.mean((errors["rte"] - errors["rte"].mean()) ** 2))  # population std, as the peers
    assert f"| ICL | 8.62 +- {std:.2f} (2.00) |" in table and "50.00 %" in table


def test_centre_offsets_are_in_the_true_cameras_axes_and_ignore_the_clouds_origin():
    """A camera 0.5 m right of the true one and turned by 2 deg: the offset is (0.5, 0, 0) wherever the cloud
    frame's origin lies, while the RTE grows with that distance times the rotation error."""
    yaw = np.radians(2.0)
    turn = make_transform(euler_to_matrix(0.0, yaw, 0.0), np.zeros(3))
    right = make_transform(np.eye(3), np.array([-0.5, 0.0, 0.0]))  # cloud -> camera: the camera moved +0.5 m in x
    rte = []
    for origin in (np.array([0.0, 0.0, 0.0]), np.array([3.0, 0.0, 12.0])):
        T_gt = make_transform(euler_to_matrix(0.0, 0.7, 0.0), origin)  # any true pose
        T_pred = turn @ right @ T_gt
        np.testing.assert_allclose(centre_offsets(T_pred, T_gt), [[0.5, 0.0, 0.0]], atol=1e-12)
        rte.append(registration_errors(T_pred, T_gt)["rte"][0])
    assert rte[0] == pytest.approx(0.5) and abs(rte[1] - 0.5) > 0.3  # the RTE moves with the origin


def test_yaw_offsets_say_how_far_right_the_predicted_camera_looks():
    """A predicted camera whose optical axis, in the true camera's axes, is (sin a, 0, cos a) (turned right by a) has
    a yaw offset of +a deg, -a turned left, wherever it stands and wherever the cloud frame's origin lies; a tilt
    about its x axis leaves it 0."""
    for degrees in (3.0, -7.5):
        a = np.radians(degrees)
        true_to_predicted = np.array([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]])
        assert np.allclose(true_to_predicted.T @ [0, 0, 1], [np.sin(a), 0, np.cos(a)])  # the predicted optical axis
        for origin in (np.zeros(3), np.array([3.0, -1.0, 12.0])):
            T_gt = make_transform(euler_to_matrix(0.1, 0.7, -0.05), origin)
            T_pred = make_transform(true_to_predicted, np.array([0.4, 0.0, -0.2])) @ T_gt
            np.testing.assert_allclose(yaw_offsets(T_pred, T_gt), [degrees], atol=1e-9)
    tilt = make_transform(euler_to_matrix(0.05, 0.0, 0.0), np.zeros(3))
    T_gt = make_transform(euler_to_matrix(0.0, 0.7, 0.0), np.zeros(3))
    np.testing.assert_allclose(yaw_offsets(tilt @ T_gt, T_gt), [0.0], atol=1e-9)
