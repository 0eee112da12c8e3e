"""The sensors: a ray-cast pinhole camera and a spinning multi-beam LiDAR over the street world,
and the two rig presets (KITTI-like and nuScenes-like).

Frames: camera x right, y down, z forward; LiDAR x forward, y left, z up; world x east, y north,
z up. ``T_a_b`` (4, 4) maps frame-b coordinates into frame a. Rays are cast with Embree (embreex,
the engine behind trimesh's ``ray_pyembree``), one ray per pixel or laser firing, on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from embreex import rtcore_scene
from embreex.mesh_construction import TriangleMesh

from i2preg.geometry import make_transform, rot_z

from .materials import surface
from .noise import value_noise
from .world import Lighting, World

# LiDAR axes in the camera frame: x_lidar (forward) = z_cam, y_lidar (left) = -x_cam, z_lidar (up) = -y_cam.
R_CAM_LIDAR = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class SensorRig:
    """Stereo colour cameras and a LiDAR, described as in a KITTI odometry calib.txt.

    P (4, 3, 4): projection matrices of cam0..cam3, P_i = K [I | K^-1 P_i[:, 3]] in the rectified cam0
    frame; Tr (4, 4): LiDAR -> cam0; cam_height: cam0 above the road (m); LiDAR beams at elevations
    (B,) (degrees) fired at ``azimuth_steps`` azimuths per turn.
    """

    name: str
    width: int
    height: int
    P: np.ndarray
    Tr: np.ndarray
    cam_height: float
    elevations: np.ndarray
    azimuth_steps: int
    max_range: float = 100.0
    range_noise: float = 0.02
    dropout: float = 0.06

    @property
    def K(self) -> np.ndarray:
        return self.P[0, :, :3]

    def T_cam0_cam(self, camera: int) -> np.ndarray:
        """Pose (4, 4) of camera ``camera`` in the cam0 frame (the rectified cameras share its axes)."""
        b = np.linalg.solve(self.K, self.P[camera, :, 3])
        return make_transform(np.eye(3), -b)


def _rig(name, width, height, f, cx, cy, p4, cam_height, lidar_in_cam0, elevations, azimuth_steps, max_range):
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    P = np.stack([np.c_[K, column] for column in p4])
    Tr = make_transform(R_CAM_LIDAR, np.asarray(lidar_in_cam0, float))
    return SensorRig(name, width, height, P, Tr, cam_height, np.asarray(elevations, float), azimuth_steps, max_range)


KITTI = _rig(
    "kitti", 1241, 376, 718.856, 607.1928, 185.2157,
    # The fourth columns of P0..P3 of KITTI odometry sequence 00.
    [(0, 0, 0), (-386.1448, 0, 0), (45.38225, -0.1130887, 0.003779761), (-337.2877, 2.369057, 0.004915215)],
    cam_height=1.65, lidar_in_cam0=(0.0, -0.08, -0.27),  # LiDAR 1.73 m high, 0.27 m behind cam0
    # HDL-64E: an upper block of 32 lasers at 1/3 deg spacing, a lower block at 1/2 deg.
    elevations=np.r_[np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.8, 32)], azimuth_steps=2083, max_range=100.0,
)

NUSCENES = _rig(
    "nuscenes", 1600, 900, 1266.4, 816.3, 491.5,
    # nuScenes has one front camera; this rig keeps KITTI's stereo layout (cam2 0.06 m left of cam0,
    # cam3 0.47 m right) so that the same layout and reader serve it.
    [(0, 0, 0), (-1266.4 * 0.54, 0, 0), (1266.4 * 0.06, 0, 0), (-1266.4 * 0.47, 0, 0)],
    cam_height=1.51, lidar_in_cam0=(0.0, -0.33, -0.76),  # LIDAR_TOP 1.84 m high, 0.76 m behind
    elevations=np.linspace(10.0, -30.0, 32), azimuth_steps=1084, max_range=80.0,
)

RIGS = {rig.name: rig for rig in (KITTI, NUSCENES)}


class RayCaster:
    """First-hit ray casting against a world's mesh with Embree, on the calling thread."""

    def __init__(self, world: World):
        self._scene = rtcore_scene.EmbreeScene()
        TriangleMesh(scene=self._scene, vertices=world.vertices, indices=world.faces)

    def cast(self, origin: np.ndarray, directions: np.ndarray, max_distance: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """Rays from origin (3,) along unit directions (N, 3): hit face (N,) int (-1 for none) and
        distance (N,) float32 (inf for none)."""
        n = len(directions)
        origins = np.broadcast_to(np.asarray(origin, np.float32), (n, 3)).copy()
        limit = np.full(n, max_distance, np.float32)
        hit = self._scene.run(origins, np.ascontiguousarray(directions, np.float32), dists=limit, output=1)
        prim = np.where(hit["geomID"] >= 0, hit["primID"], -1)
        return prim, np.where(prim >= 0, hit["tfar"], np.float32(np.inf))

    def occluded(self, origins: np.ndarray, directions: np.ndarray, max_distance: float) -> np.ndarray:
        """Whether rays from origins (N, 3) along unit directions (N, 3) hit anything within max_distance:
        (N,) bool (Embree's any-hit query, cheaper than ``cast``)."""
        limit = np.full(len(origins), max_distance, np.float32)
        return self._scene.run(np.ascontiguousarray(origins, np.float32), np.ascontiguousarray(directions, np.float32),
                               dists=limit, query="OCCLUDED") >= 0


class Camera:
    """A pinhole camera (width x height, intrinsics K (3, 3)) rendering colour and depth by casting
    one ray through each pixel centre."""

    def __init__(self, K: np.ndarray, width: int, height: int):
        self.width, self.height = width, height
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        rays = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(u.size)])
        norm = np.linalg.norm(rays, axis=0)
        self.rays = (rays / norm).astype(np.float32)  # (3, H*W) unit, camera frame, row-major pixels
        self.depth_per_range = (1 / norm).astype(np.float32)

    def render(self, world: World, caster: RayCaster, T_world_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB image (H, W, 3) uint8 and z-depth (H, W) float32 in metres (0 where the sky is seen)."""
        directions = T_world_cam[:3, :3].astype(np.float32) @ self.rays  # (3, N), world frame
        origin = T_world_cam[:3, 3].astype(np.float32)
        prim, distance = caster.cast(origin, directions.T)
        hit = prim >= 0
        colour = np.empty(directions.shape, np.float32)
        sky = np.flatnonzero(~hit)
        colour[:, sky] = _sky(world.lighting, np.take(directions, sky, axis=1), world.key)
        rows = np.flatnonzero(hit)
        t = distance[rows]
        points = origin[:, None] + np.take(directions, rows, axis=1) * t
        colour[:, rows] = _shade(world, caster, prim[rows], points, t)
        planes = (255 * np.sqrt(np.clip(colour, 0, 1)) + 0.5).astype(np.uint8)  # gamma 2
        rgb = cv2.merge([plane.reshape(self.height, self.width) for plane in planes])
        depth = np.where(hit, distance * self.depth_per_range, 0).astype(np.float32)
        return rgb, depth.reshape(self.height, self.width)


def _sky(light: Lighting, directions: np.ndarray, key: int) -> np.ndarray:
    """Sky colour (3, N) along view directions (3, N): horizon-to-zenith gradient and a sun glow, and
    with cloud cover, clouds: two octaves of value noise on a layer 1 km up (features 150-400 m),
    thresholded by the cover, lit from the side of the sun."""
    up = np.clip(directions[2], 0, 1) ** 0.6
    glow = np.clip(light.sun_dir @ directions, 0, 1) ** 48
    sky = light.horizon[:, None] + (light.zenith - light.horizon)[:, None] * up + 0.6 * light.sun[:, None] * glow
    if light.clouds == 0:
        return sky
    height = np.maximum(directions[2], np.float32(0.03))
    x, y = 1000 * directions[0] / height, 1000 * directions[1] / height
    density = 0.65 * value_noise(key + 61, x, y, 400.0) + 0.35 * value_noise(key + 62, x, y, 150.0)
    cover = np.clip((density - (1 - light.clouds)) / 0.25, 0, 1) * np.clip(directions[2] / 0.05, 0, 1)
    lit = 0.75 + 0.25 * np.clip(light.sun_dir @ directions, 0, 1)
    cloud = (light.ambient + 0.45 * light.sun)[:, None] * (lit * (1.15 - 0.4 * density))
    return sky + (cloud - sky) * cover


def _shade(world: World, caster: RayCaster, prim: np.ndarray, points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Lambertian sun and ambient light on the surface albedo at points (3, N), faded into the horizon
    colour with distance (N,) (haze); (3, N) linear RGB. Every mesh is closed, so the camera sees
    front faces only. In the varied world a ray towards the sun from each sunlit point casts shadows."""
    light = world.lighting
    albedo, _ = surface(world, prim, points)
    sunlit = world.face_sun[prim]
    if world.varied:
        facing = np.flatnonzero(sunlit > 0)
        start = np.take(points, facing, axis=1).T + 0.03 * np.take(world.face_normal, prim[facing], axis=0)
        sunlit[facing[caster.occluded(start, np.broadcast_to(light.sun_dir, start.shape), 300.0)]] = 0
    irradiance = light.ambient[:, None] + light.sun[:, None] * sunlit
    haze = 1 - np.exp(distance * np.float32(-1 / light.haze))
    return albedo * irradiance * (1 - haze) + light.horizon[:, None] * haze


class Lidar:
    """A spinning LiDAR (the rig's beams and azimuth steps) with Gaussian range noise, random dropout
    (more on dark glass) and per-material reflectance that fades at grazing incidence."""

    def __init__(self, rig: SensorRig):
        self.rig = rig
        azimuth = 2 * np.pi * np.arange(rig.azimuth_steps) / rig.azimuth_steps
        e, a = np.meshgrid(np.radians(rig.elevations), azimuth, indexing="ij")
        # Unit beam directions (B * A, 3) in the LiDAR frame, beam-major, azimuth counter-clockwise from forward.
        self.directions = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)

    def scan(self, world: World, caster: RayCaster, T_world_lidar: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One sweep captured at a single instant: points (N, 4) float32 (x, y, z in the LiDAR frame,
        reflectance in [0, 1]). The firing azimuths start at a random fraction of a step."""
        rig = self.rig
        spin = rot_z(rng.uniform(0, 2 * np.pi / rig.azimuth_steps))
        local = (self.directions @ spin.T).astype(np.float32)
        directions = local @ T_world_lidar[:3, :3].T.astype(np.float32)
        origin = T_world_lidar[:3, 3].astype(np.float32)
        prim, distance = caster.cast(origin, directions, rig.max_range)
        hit = np.flatnonzero(prim >= 0)
        prim, distance = prim[hit], distance[hit]
        local, directions = np.take(local, hit, axis=0), np.take(directions, hit, axis=0)
        _, reflectance = surface(world, prim, (origin + directions * distance[:, None]).T)
        keep = rng.random(len(hit)) >= rig.dropout + 0.4 * (reflectance < 0.06)
        incidence = np.abs(np.sum(np.take(world.face_normal, prim, axis=0) * directions, axis=1))
        reflectance = reflectance * (0.5 + 0.5 * incidence) + rng.normal(0, 0.02, len(hit))
        distance = distance + rng.normal(0, rig.range_noise, len(hit))
        points = np.concatenate([local * distance[:, None], np.clip(reflectance, 0, 1)[:, None]], 1)
        return points[keep & (distance < rig.max_range)].astype(np.float32)
