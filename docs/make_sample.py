"""Write the sample pair that ships with i2preg (``i2preg.load_sample``) into src/i2preg/sample_data/.

    python docs/make_sample.py            # the shipped files, byte for byte
    python docs/make_sample.py --check    # and register them with the bundled model

One frame of the project's own synthetic street world, generated as ``i2preg synth --seed 1`` writes it:
world seed 1 (the training world), sequence 00 of 100 frames, camera 2. The LiDAR scan is moved into the
camera frame, kept one point per 0.1 m voxel (the model's own voxel), subsampled to ``POINTS`` points, and
moved by a protocol perturbation P drawn with ``PERTURBATION_SEED``, as in the benchmark's test pairs; the
true pose is P^-1. Files:

    image.png    (376, 1241, 3) RGB, the full camera image
    points.bin   (N, 4) float32 x, y, z (cloud frame, metres), reflectance: the KITTI .bin layout
    K.txt        the 9 numbers of K (3, 3), row-major, of image.png
    pose.txt     (4, 4) true pose, cloud frame -> camera frame: u ~ K (R p + t)

``FRAME`` is the first of frames 0, 10, 20, ... that the bundled model registers within 0.5 m and 2 deg
(the protocol's success needs 2 m and 5 deg), so that the sample shows a success with a margin. The frame is
from the training world: it demonstrates the API and is no measure of accuracy (BENCHMARKS.md has those).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from i2preg.data.kitti import camera_calibration
from i2preg.data.ops import sample_indices, voxel_downsample
from i2preg.data.synthetic.generate import SyntheticSequence
from i2preg.files import write_bytes, write_text
from i2preg.geometry import invert_transform, sample_perturbation, transform_points

WORLD_SEED, SEQUENCE, SEQUENCE_FRAMES, CAMERA = 1, 0, 100, 2
FRAME = 10
POINTS = 40960
VOXEL = 0.1
PERTURBATION_SEED = 7351
OUT = Path(__file__).resolve().parents[1] / "src" / "i2preg" / "sample_data"


def make_sample(frame: int = FRAME) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sample of ``frame``: image (H, W, 3) uint8, points (POINTS, 4) float32 (cloud frame + reflectance),
    K (3, 3) and the true pose (4, 4), cloud frame -> camera frame."""
    sequence = SyntheticSequence(WORLD_SEED, SEQUENCE, SEQUENCE_FRAMES)
    image, _ = sequence.render(frame, CAMERA)
    scan = sequence.scan(frame)
    calibration = camera_calibration(sequence.rig.P[CAMERA], sequence.rig.Tr)
    points_cam = transform_points(calibration.T_cam_velo, scan[:, :3].astype(np.float64))
    rng = np.random.default_rng([PERTURBATION_SEED, frame])
    kept = voxel_downsample(points_cam, VOXEL)
    index = kept[np.sort(sample_indices(len(kept), POINTS, rng)[0])]
    P = sample_perturbation(rng)
    points = np.c_[transform_points(P, points_cam[index]), scan[index, 3]].astype(np.float32)
    return image, points, calibration.K, invert_transform(P)


def write_sample(out: Path, image: np.ndarray, points: np.ndarray, K: np.ndarray, pose: np.ndarray) -> None:
    """The four files of the module docstring under ``out``."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok, "OpenCV could not encode the image"
    write_bytes(out / "image.png", png.tobytes())
    write_bytes(out / "points.bin", points.astype("<f4").tobytes())
    write_text(out / "K.txt", "".join(" ".join(f"{x:.17g}" for x in row) + "\n" for row in K))
    write_text(out / "pose.txt", "".join(" ".join(f"{x:.17g}" for x in row) + "\n" for row in pose))


def check() -> tuple[float, float]:
    """RTE (m) and RRE (deg) of the bundled model on the shipped files (the Euler-angle sum, as the protocol)."""
    import i2preg
    from i2preg.metrics import registration_errors

    sample = i2preg.load_sample()
    result = i2preg.Registrator.from_pretrained().register(sample.image, sample.points, sample.K)
    errors = registration_errors(result.pose[None], sample.pose[None])
    return float(errors["rte"][0]), float(errors["rre"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=FRAME, help=f"frame of the sequence (default {FRAME})")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: the package's sample_data)")
    parser.add_argument("--check", action="store_true", help="register the written files with the bundled model")
    args = parser.parse_args()
    write_sample(args.out, *make_sample(args.frame))
    sizes = ", ".join(f"{p.name} {p.stat().st_size:,} bytes" for p in sorted(args.out.iterdir()))
    print(f"frame {args.frame} -> {args.out}: {sizes}")
    if args.check:
        if args.out.resolve() != OUT:
            parser.error("--check registers the package's own sample: leave --out at its default")
        rte, rre = check()
        print(f"bundled model: RTE {rte:.3f} m, RRE {rre:.2f} deg")


if __name__ == "__main__":
    main()
