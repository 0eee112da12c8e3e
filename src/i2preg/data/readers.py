"""Readers for the files users bring: point clouds, camera calibrations and images.

Point clouds (``read_point_cloud``), chosen by content where the format has a header or magic
(PCD, PLY, NPY, NPZ) and otherwise by name and size:

- KITTI ``.bin``: float32 x, y, z, reflectance (16 bytes a point).
- nuScenes ``.pcd.bin``: float32 x, y, z, intensity, ring (20 bytes a point). A plain ``.bin`` whose
  size is a multiple of 20 but not of 16 is read this way too; a multiple of both reads as KITTI unless its
  values cannot be KITTI's (an intensity below zero), then as nuScenes. Values that fit neither layout (a file
  of other records) are refused.
- PCD (``ascii``, ``binary``, ``binary_compressed``): fields x, y, z and optionally intensity
  (or reflectance, i); any other fields, of any SIZE, TYPE and COUNT, are skipped.
- PLY (ascii, binary little and big endian): the ``vertex`` element's x, y, z and optional intensity.
- NPY (N, 3) or (N, 4) (fourth column: intensity); NPZ: the array ``points`` or the only array.

Calibrations (``read_calibration_file``): KITTI odometry and object ``calib.txt``, a plain 3x3 K
file with an optional 4x4 lidar-to-camera file beside it (the nuScenes-style pair), or a YAML/JSON
mapping. Every problem is an ``InputError``: one line naming the file.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..errors import InputError, require_file
from .kitti import CameraCalibration, read_calibration

INTENSITY_FIELDS = ("intensity", "reflectance", "i", "scalar_intensity", "remission")
"""Field names read as the intensity channel (case-insensitive), first match wins."""

POINT_CLOUD_SUFFIXES = (".bin", ".pcd.bin", ".pcd", ".ply", ".npy", ".npz")

XYZI = tuple[np.ndarray, np.ndarray | None]
"""points (N, 3) and intensity (N,) or None, in the file's dtype."""


# ---------------------------------------------------------------------------------------------
# Point clouds
# ---------------------------------------------------------------------------------------------


def read_point_cloud(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a point cloud in any supported format (see the module docstring).

    Returns points (N, 3) float32 in the file's own frame (metres as stored) and intensity (N,)
    float32 as stored (KITTI 0-1, nuScenes 0-255), or None when the file has no intensity channel.
    Points holding NaN or inf (an organised cloud's missing returns, as PCL writes them) are left out with a
    warning that gives their count. Raises ``InputError`` for a missing, truncated, empty or malformed file,
    for one whose every point holds NaN or inf, and for one whose coordinates reach beyond ``MAX_COORDINATE_M``.
    """
    path = require_file(path)
    data, layout = path.read_bytes(), ""
    if data.startswith(b"\x93NUMPY"):
        xyzi = _read_npy(path)
    elif data.startswith(b"PK\x03\x04"):
        xyzi = _read_npz(path)
    elif data.startswith((b"ply\n", b"ply\r\n")):
        xyzi = _read_ply(data, path)
    elif data[:64].lstrip().startswith((b"# .PCD", b"VERSION", b"FIELDS")):
        xyzi = _read_pcd(data, path)
    elif path.name.lower().endswith(".pcd.bin"):
        xyzi = _read_float_records(data, 5, path)
    elif path.suffix.lower() == ".bin":
        if len(data) % 16 and len(data) % 20:
            raise InputError(
                f"truncated: {len(data)} bytes is a multiple of neither 16 ({FLOAT_RECORDS[4]}) "
                f"nor 20 ({FLOAT_RECORDS[5]})", path,
            )
        problems = []
        for columns in [c for c in (4, 5) if len(data) % (4 * c) == 0]:
            try:
                xyzi = _read_float_records(data, columns, path)
                break
            except InputError as err:
                problems.append(err.problem)
        else:
            raise InputError(f"in no known layout: {'; '.join(problems)}", path)
        layout = f" (read as {FLOAT_RECORDS[columns]})"
    elif path.suffix.lower() in POINT_CLOUD_SUFFIXES:
        raise InputError(f"not a {path.suffix.lower()[1:].upper()} file (no valid header)", path)
    else:
        raise InputError(f"unknown point-cloud format (expected one of {', '.join(POINT_CLOUD_SUFFIXES)})", path)
    points, intensity = xyzi
    points = np.ascontiguousarray(points, dtype=np.float32)
    intensity = None if intensity is None else np.ascontiguousarray(intensity, dtype=np.float32)
    if len(points) == 0:
        raise InputError("empty point cloud (no points)", path)
    finite = np.isfinite(points).all(axis=1)
    if intensity is not None:
        finite &= np.isfinite(intensity)
    if not finite.any():
        raise InputError(f"NaN or inf in all {len(points)} points", path)
    if not finite.all():
        warnings.warn(f"{path}: left out {int((~finite).sum())} of {len(points)} points holding NaN or inf", stacklevel=2)
        points, intensity = points[finite], None if intensity is None else intensity[finite]
    reach = float(np.abs(points).max())
    if reach > MAX_COORDINATE_M:
        raise InputError(f"coordinates reach {reach:.3g} m, beyond {MAX_COORDINATE_M:,.0f} m{layout}: not a cloud in "
                         "metres about its sensor", path)
    return points, intensity


MAX_COORDINATE_M = 1e5
"""The largest |x|, |y| or |z| a cloud may hold (metres): beyond it float32 keeps no centimetres (8 mm steps at
1e5 m), and a registration needs the cloud about its sensor anyway; larger values mostly mean a file read in the
wrong layout or not in metres."""


FLOAT_RECORDS = {4: "KITTI: float32 x, y, z, reflectance", 5: "nuScenes: float32 x, y, z, intensity, ring"}


def _read_float_records(data: bytes, columns: int, path: Path) -> XYZI:
    """Raw little-endian float32 records of ``columns`` (4 or 5) values: x, y, z, intensity, ... Refused when the
    values cannot be that layout's, as when a file of another record size is read with this one: an intensity below
    zero, or (5 columns) a ring that is no whole number from 0 to 1,023."""
    if len(data) % (4 * columns):
        raise InputError(
            f"truncated: {len(data)} bytes is not a multiple of {4 * columns} ({FLOAT_RECORDS[columns]})", path
        )
    records = np.frombuffer(data, dtype="<f4").reshape(-1, columns)
    finite = records[np.isfinite(records).all(axis=1)]
    if (finite[:, 3] < 0).any():
        problem = f"{int((finite[:, 3] < 0).sum())} of {len(records)} intensities below zero"
        raise InputError(f"read as {FLOAT_RECORDS[columns]}: {problem}", path)
    if columns == 5:
        ring = finite[:, 4]
        wrong = int(((ring < 0) | (ring > 1023) | (ring != np.round(ring))).sum())
        if wrong:
            raise InputError(f"read as {FLOAT_RECORDS[columns]}: {wrong} of {len(records)} rings not a whole "
                             "number from 0 to 1,023", path)
    return records[:, :3], records[:, 3]


def _columns(names: list[str], path: Path, header: str) -> tuple[list[int], int | None]:
    """Indices of x, y, z and of the intensity field (or None) among ``names``."""
    lower = [name.lower() for name in names]
    missing = [axis for axis in "xyz" if axis not in lower]
    if missing:
        raise InputError(f"no {', '.join(missing)} field ({header}: {' '.join(names) or 'none'})", path)
    intensity = next((lower.index(name) for name in INTENSITY_FIELDS if name in lower), None)
    return [lower.index(axis) for axis in "xyz"], intensity


def _read_npy(path: Path) -> XYZI:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"not a readable NPY file ({err})", path) from None
    return _split_array(array, path)


def _read_npz(path: Path) -> XYZI:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.keys()}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"not a readable NPZ file ({err})", path) from None
    if "points" not in arrays and len(arrays) != 1:
        raise InputError(f"no 'points' array among {len(arrays)} arrays ({', '.join(list(arrays)[:5])})", path)
    return _split_array(arrays.get("points", next(iter(arrays.values()))), path)


def _split_array(array: np.ndarray, path: Path) -> XYZI:
    """(N, 3) -> points; (N, 4) -> points and intensity."""
    if array.ndim != 2 or array.shape[1] not in (3, 4):
        raise InputError(f"array of shape {array.shape}: expected (N, 3) x, y, z or (N, 4) x, y, z, intensity", path)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"array of dtype {array.dtype}: expected numbers", path)
    return array[:, :3], array[:, 3] if array.shape[1] == 4 else None


# PCD ------------------------------------------------------------------------------------------

PCD_KINDS = {"F": "f", "U": "u", "I": "i"}
PCD_TYPES = {("F", 2), ("F", 4), ("F", 8)} | {(kind, size) for kind in "UI" for size in (1, 2, 4, 8)}
"""(TYPE, SIZE) pairs we read: float16/32/64 and signed or unsigned integers of 1-8 bytes."""


def _header_lines(data: bytes, last_key: bytes, path: Path, limit: int = 1 << 16) -> tuple[list[str], int]:
    """Text lines up to and including the one starting with ``last_key``, and the offset after it."""
    lines, start = [], 0
    while start < min(len(data), limit):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line = data[start:end].decode("ascii", errors="replace").strip()
        lines.append(line)
        start = end + 1
        if line.split(maxsplit=1)[:1] == [last_key.decode()]:
            return lines, start
    raise InputError(f"header has no {last_key.decode()} line", path)


def _read_pcd(data: bytes, path: Path) -> XYZI:
    lines, offset = _header_lines(data, b"DATA", path)
    header = {}
    for line in lines:
        if line and not line.startswith("#"):
            key, *values = line.split()
            header[key.upper()] = values
    names = header.get("FIELDS", [])
    sizes = header.get("SIZE", [])
    types = [t.upper() for t in header.get("TYPE", [])]
    counts = header.get("COUNT", ["1"] * len(names))
    if not (len(sizes) == len(types) == len(counts) == len(names)):
        raise InputError(
            f"header lists {len(names)} FIELDS but {len(sizes)} SIZE, {len(types)} TYPE, {len(counts)} COUNT", path
        )
    try:
        sizes, counts = [int(s) for s in sizes], [int(c) for c in counts]
        width, height = int(header.get("WIDTH", ["0"])[0]), int(header.get("HEIGHT", ["1"])[0])
        num_points = int(header["POINTS"][0]) if "POINTS" in header else width * height
    except (ValueError, IndexError):
        raise InputError("header holds a SIZE, COUNT, WIDTH, HEIGHT or POINTS that is not an integer", path) from None
    for name, kind, size in zip(names, types, sizes):
        if (kind, size) not in PCD_TYPES:
            raise InputError(f"field {name} has TYPE {kind} SIZE {size}: not a PCD type", path)
    xyz, intensity = _columns(names, path, "FIELDS")
    wanted = xyz + ([intensity] if intensity is not None else [])
    for index in wanted:
        if counts[index] != 1:
            raise InputError(f"field {names[index]} has COUNT {counts[index]}, expected 1", path)
    dtypes = [np.dtype(f"<{PCD_KINDS[kind]}{size}") for kind, size in zip(types, sizes)]
    mode = header["DATA"][0].lower() if header["DATA"] else ""
    body = data[offset:]
    if mode == "ascii":
        columns = _pcd_ascii(body, counts, num_points, path)
        starts = np.cumsum([0] + counts)
        values = [columns[:, starts[i]] for i in wanted]
    elif mode == "binary":
        record = np.dtype([(f"f{i}", dt, (c,)) for i, (dt, c) in enumerate(zip(dtypes, counts))])
        if len(body) < num_points * record.itemsize:
            raise InputError(
                f"truncated: {len(body)} data bytes, the header promises {num_points} points "
                f"of {record.itemsize} bytes", path,
            )
        table = np.frombuffer(body, dtype=record, count=num_points)
        values = [table[f"f{i}"][:, 0] for i in wanted]
    elif mode == "binary_compressed":
        values = _pcd_compressed(body, dtypes, counts, num_points, wanted, path)
    else:
        raise InputError(f"DATA {mode or '(none)'}: expected ascii, binary or binary_compressed", path)
    points = np.stack(values[:3], axis=1)
    return points, values[3] if intensity is not None else None


def _pcd_ascii(body: bytes, counts: list[int], num_points: int, path: Path) -> np.ndarray:
    """The (num_points, sum(counts)) float64 values of an ascii PCD body."""
    width = sum(counts)
    try:
        values = np.array(body.split(), dtype=np.float64)
    except ValueError:
        raise InputError("DATA ascii holds a value that is not a number", path) from None
    if values.size < num_points * width:
        raise InputError(f"truncated: {values.size} values, the header promises {num_points} points of {width}", path)
    if values.size > num_points * width:
        raise InputError(f"{values.size} values, more than the header's {num_points} points of {width}", path)
    return values.reshape(num_points, width)


def _pcd_compressed(
    body: bytes, dtypes: list[np.dtype], counts: list[int], num_points: int, wanted: list[int], path: Path
) -> list[np.ndarray]:
    """Columns ``wanted`` of a binary_compressed body: uint32 compressed and raw sizes, then LZF data
    holding each field's values for all points, field after field."""
    if len(body) < 8:
        raise InputError("truncated: binary_compressed data has no size words", path)
    compressed_size, raw_size = (int(v) for v in np.frombuffer(body[:8], dtype="<u4"))
    expected = num_points * sum(dt.itemsize * c for dt, c in zip(dtypes, counts))
    if raw_size != expected:
        raise InputError(f"binary_compressed data of {raw_size} bytes, the header promises {expected}", path)
    if len(body) - 8 < compressed_size:
        raise InputError(
            f"truncated: {len(body) - 8} compressed bytes, the data header promises {compressed_size}", path
        )
    raw = lzf_decompress(body[8 : 8 + compressed_size], raw_size, path)
    starts = np.cumsum([0] + [num_points * dt.itemsize * c for dt, c in zip(dtypes, counts)])
    return [
        np.frombuffer(raw, dtype=dtypes[i], count=num_points * counts[i], offset=int(starts[i]))
        for i in wanted
    ]


def lzf_decompress(data: bytes, size: int, path: str | os.PathLike | None = None) -> bytes:
    """Decompress LZF (liblzf's format, used by PCD ``binary_compressed``) into exactly ``size`` bytes.

    A control byte c < 32 starts a run of c + 1 literal bytes; otherwise it is a back reference of
    length (c >> 5) + 2 (7 means: add the next byte) at distance ((c & 31) << 8) + next byte + 1.
    """
    out = bytearray()
    position, end = 0, len(data)
    while position < end:
        control = data[position]
        position += 1
        if control < 32:
            run = data[position : position + control + 1]
            if len(run) != control + 1:
                raise InputError("corrupt LZF data: literal run past the end", path)
            out += run
            position += control + 1
            continue
        length = control >> 5
        if length == 7:
            if position >= end:
                raise InputError("corrupt LZF data: back reference past the end", path)
            length += data[position]
            position += 1
        if position >= end:
            raise InputError("corrupt LZF data: back reference past the end", path)
        distance = ((control & 31) << 8) + data[position] + 1
        position += 1
        length += 2
        start = len(out) - distance
        if start < 0:
            raise InputError("corrupt LZF data: back reference before the start", path)
        if distance >= length:
            out += out[start : start + length]
        else:  # overlapping copy: the last `distance` bytes repeat
            pattern = bytes(out[start:])
            out += (pattern * (length // distance + 1))[:length]
    if len(out) != size:
        raise InputError(f"corrupt LZF data: {len(out)} bytes decompressed, expected {size}", path)
    return bytes(out)


# PLY ------------------------------------------------------------------------------------------

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _read_ply(data: bytes, path: Path) -> XYZI:
    lines, offset = _header_lines(data, b"end_header", path)
    formats = [line.split() for line in lines if line.startswith("format")]
    if not formats or len(formats[0]) < 2:
        raise InputError("header has no format line", path)
    fmt = formats[0][1]
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []  # (name, count, [(property, type)])
    for line in lines:
        words = line.split()
        if words[:1] == ["element"]:
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(f"bad PLY element line {line!r}", path)
            elements.append((words[1], int(words[2]), []))
        elif words[:1] == ["property"] and elements:
            if words[1] == "list":
                elements[-1][2].append((words[-1], "list"))
            elif len(words) == 3 and words[1] in PLY_TYPES:
                elements[-1][2].append((words[2], words[1]))
            else:
                raise InputError(f"unknown PLY property line {line!r}", path)
    names = [name for name, _, _ in elements]
    if "vertex" not in names:
        raise InputError(f"no vertex element (elements: {', '.join(names) or 'none'})", path)
    index = names.index("vertex")
    _, num_points, properties = elements[index]
    xyz, intensity = _columns([name for name, _ in properties], path, "vertex properties")
    wanted = xyz + ([intensity] if intensity is not None else [])
    if any(kind == "list" for _, kind in properties):
        raise InputError("vertex element with a list property is not supported", path)
    body = data[offset:]
    if fmt == "ascii":
        skip = sum(count for _, count, _ in elements[:index])
        rows = body.decode("ascii", errors="replace").splitlines()[skip : skip + num_points]
        if len(rows) < num_points:
            raise InputError(f"truncated: {len(rows)} vertex lines, the header promises {num_points}", path)
        try:
            table = np.array(" ".join(rows).split(), dtype=np.float64)
        except ValueError:
            raise InputError("vertex data holds a value that is not a number", path) from None
        if table.size != num_points * len(properties):
            raise InputError(f"vertex lines hold {table.size} values, expected {num_points} x {len(properties)}", path)
        table = table.reshape(num_points, len(properties))
        values = [table[:, i] for i in wanted]
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        skip = 0
        for name, count, props in elements[:index]:
            if any(kind == "list" for _, kind in props):
                raise InputError(f"element {name} with a list property before the vertices is not supported", path)
            skip += count * sum(np.dtype(PLY_TYPES[kind]).itemsize for _, kind in props)
        record = np.dtype([(f"p{i}", order + PLY_TYPES[kind]) for i, (_, kind) in enumerate(properties)])
        if len(body) < skip + num_points * record.itemsize:
            raise InputError(
                f"truncated: {len(body)} data bytes, the header promises {num_points} vertices "
                f"of {record.itemsize} bytes", path,
            )
        table = np.frombuffer(body, dtype=record, count=num_points, offset=skip)
        values = [table[f"p{i}"].astype(np.float64) for i in wanted]
    else:
        raise InputError(f"format {fmt}: expected ascii, binary_little_endian or binary_big_endian", path)
    return np.stack(values[:3], axis=1), values[3] if intensity is not None else None


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserCalibration(CameraCalibration):
    """A ``CameraCalibration`` (K (3, 3), T_cam_velo (4, 4) cloud -> camera frame) with the image's
    lens distortion: OpenCV coefficients (k1, k2, p1, p2[, k3, ...]) or None for a pinhole image.
    K and the projection hold for the undistorted image: see ``undistort_image``."""

    distortion: np.ndarray | None = None


CALIBRATION_KEYS = {"K", "fx", "fy", "cx", "cy", "distortion", "T_cam_lidar"}


def read_calibration_file(
    path: str | os.PathLike, camera: int = 2, extrinsic: str | os.PathLike | None = None
) -> UserCalibration:
    """Read a camera calibration: K (3, 3) and T_cam_velo (4, 4), cloud (LiDAR) frame -> camera frame.

    path: a KITTI odometry or object ``calib.txt`` (camera ``camera``: its P and Tr, rectification
    folded in as in ``kitti.read_calibration``); a text file with 9 numbers (K, row-major); or a YAML
    or JSON mapping ``{K: 3x3 | fx, fy, cx, cy; distortion: optional list; T_cam_lidar: optional 4x4}``.
    extrinsic: a text file with the 4x4 (or 3x4) LiDAR -> camera transform, for a K file without one
    (the nuScenes-style pair). Without any extrinsic, T_cam_velo is the identity: the cloud is
    already in the camera frame.
    """
    path = require_file(path)
    distortion = None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        K, T, distortion = _read_calibration_mapping(path)
    else:
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            raise InputError("not a text calibration file (it holds binary data)", path)
        text = data.decode(errors="replace")
        if ":" in text:
            calibration = read_calibration(path, cameras=(camera,))[camera]
            K, T = calibration.K, calibration.T_cam_velo
        else:
            numbers = _numbers(text, path)
            if numbers.size != 9:
                raise InputError(f"{numbers.size} numbers: expected the 9 of K (a 4x4 extrinsic goes in its own file: "
                                 "--extrinsic, extrinsic= in Python)", path)
            K, T = numbers.reshape(3, 3), None
    if extrinsic is not None:
        if T is not None:
            raise InputError(f"holds the extrinsic already; {os.fspath(extrinsic)} would replace it", path)
        extrinsic = require_file(extrinsic)
        T = _transform(_numbers(extrinsic.read_text(errors="replace"), extrinsic), extrinsic)
    _check_intrinsics(K, path)
    return UserCalibration(K=K, T_cam_velo=np.eye(4) if T is None else T, distortion=distortion)


def _numbers(text: str, path: Path) -> np.ndarray:
    try:
        return np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        raise InputError("holds a value that is not a number", path) from None


def _transform(values, path: Path, what: str = "extrinsic") -> np.ndarray:
    """4x4 (or 3x4) values -> a rigid (4, 4) transform, checked; ``what`` names it in the errors."""
    values = np.asarray(values, dtype=np.float64)
    if values.size not in (12, 16):
        raise InputError(f"{what} of {values.size} numbers: expected a 4x4 (16) or 3x4 (12) matrix", path)
    T = np.eye(4)
    T[:3] = values.reshape(-1, 4)[:3]
    if values.size == 16 and not np.allclose(values.reshape(4, 4)[3], [0, 0, 0, 1]):
        raise InputError(f"{what}'s last row is not 0 0 0 1", path)
    if not is_rotation(T[:3, :3]):
        raise InputError(f"{what}'s 3x3 part is not a rotation", path)
    return T


def is_rotation(R: np.ndarray) -> bool:
    """Whether the (3, 3) R is a proper rotation, to 1e-4 (what pose and extrinsic files are checked with)."""
    return bool(np.allclose(R.T @ R, np.eye(3), atol=1e-4) and np.linalg.det(R) > 0)


def read_pose_file(path: str | os.PathLike, what: str = "pose") -> np.ndarray:
    """A rigid transform (4, 4) from a text file of its 4x4 (or 3x4) numbers, row-major (the ``pose.txt`` that
    ``i2preg register`` writes); ``what`` names it in the errors."""
    path = require_file(path)
    return _transform(_numbers(path.read_text(errors="replace"), path), path, what)


def _check_intrinsics(K: np.ndarray, path: Path) -> None:
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise InputError("K is not an intrinsics matrix ([[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0)", path)


def _read_calibration_mapping(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(K, T_cam_lidar or None, distortion or None) of a YAML/JSON calibration."""
    try:
        mapping = yaml.safe_load(path.read_text(errors="replace"))
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML/JSON ({str(err).splitlines()[0]})", path) from None
    if not isinstance(mapping, dict):
        raise InputError("expected a mapping with K (or fx, fy, cx, cy), distortion, T_cam_lidar", path)
    unknown = sorted(set(mapping) - CALIBRATION_KEYS)
    if unknown:
        raise InputError(
            f"unknown key(s) {', '.join(map(str, unknown))}: expected {', '.join(sorted(CALIBRATION_KEYS))}", path
        )
    if "K" not in mapping and not {"fx", "fy", "cx", "cy"} <= set(mapping):
        raise InputError("no intrinsics: give K or all of fx, fy, cx, cy", path)
    try:
        if "K" in mapping:
            K = np.array(mapping["K"], dtype=np.float64).reshape(3, 3)
        else:
            fx, fy, cx, cy = (float(mapping[k]) for k in ("fx", "fy", "cx", "cy"))
            K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        distortion = mapping.get("distortion")
        distortion = None if distortion is None else np.array(distortion, dtype=np.float64).ravel()
        T = mapping.get("T_cam_lidar")
        T = None if T is None else np.array(T, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError("K, distortion or T_cam_lidar holds something that is not a matrix of numbers", path) from None
    T = None if T is None else _transform(T, path)
    if distortion is not None and distortion.size not in (4, 5, 8, 12, 14):
        raise InputError(f"distortion of {distortion.size} coefficients: OpenCV takes 4, 5, 8, 12 or 14", path)
    return K, T, distortion


def undistort_image(image: np.ndarray, K: np.ndarray, distortion: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Remove lens distortion (OpenCV model) from an (H, W, 3) image; returns (image, K) where K (3, 3)
    is the intrinsics of the undistorted image. We keep the same K (cv2.undistort's default): the
    pinhole image has the original size and principal point, and loses a little at the corners."""
    if distortion is None or not np.any(distortion):
        return image, K
    return cv2.undistort(image, K, np.asarray(distortion, np.float64)), K


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """A PNG/JPG (or any format OpenCV decodes) -> (H, W, 3) uint8 RGB; grey and 16-bit images are
    converted, alpha dropped. Decoded from the bytes, so any file name works."""
    path = require_file(path)
    encoded = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    if bgr is None:
        raise InputError("not a readable image (PNG or JPG expected)", path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
