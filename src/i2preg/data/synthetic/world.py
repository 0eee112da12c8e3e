"""The synthetic street world: an irregular street grid whose blocks hold buildings, parks, parking
lots or open lots, with sidewalks, street trees, street lights, signs and parked cars, lit by a
per-sequence sun and sky. The varied appearance (``APPEARANCES``) adds street clutter (bollards, bins,
bushes, hedges, fences, pedestrians, vans) and clouds; the renderer then also casts sun shadows, and
facades get panel seams and weathering (materials.py, sensors.py).

World frame: x east, y north, z up, metres. The road surface is z = 0; every block (sidewalk
included) is a 0.15 m high slab. A world is a pure function of its ``key`` (seed and sequence) and
of the route it is built around (only blocks near the route are populated).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.spatial import cKDTree

from .mesh import MeshBuilder
from .noise import hash_uniform

KERB_HEIGHT = 0.15
LANE_WIDTH = 3.3
PARKING_WIDTH = 2.2
_INDEX_OFFSET = 1 << 20  # keeps grid indices positive in random-generator seeds
_NO_INSTANCE = 0

APPEARANCES = ("default", "varied")
"""World appearances: ``default`` is the world the bundled model and the test set were made with;
``varied`` adds clutter, clouds, shadows and facade weathering, each from random streams of its own, so
the default world's every byte stays as it was."""


class Surface(IntEnum):
    """The surface class of a face; materials.py gives each its appearance and reflectance."""

    ROAD = 0
    SLAB = 1  # block tops: sidewalks and lot interiors
    KERB = 2
    WALL = 3
    ROOF = 4
    POLE = 5
    SIGN = 6
    TRUNK = 7
    FOLIAGE = 8
    CAR_BODY = 9
    CAR_GLASS = 10
    TYRE = 11


class Block(IntEnum):
    BUILDINGS = 0
    PARK = 1
    PARKING = 2
    LOT = 3


class Facade(IntEnum):
    PUNCHED = 0  # a grid of windows
    RIBBON = 1  # continuous window bands, one per floor
    CURTAIN = 2  # glass between mullions


# Columns of World.inst_params for buildings.
FLOOR_H, GROUND_H, WIN_W, WIN_H, WIN_SPACING, SILL, STYLE, SHOPFRONT = range(8)

_WALL_COLOURS = np.array(
    [[0.85, 0.80, 0.70], [0.92, 0.90, 0.85], [0.80, 0.55, 0.40], [0.60, 0.35, 0.28], [0.90, 0.82, 0.55],
     [0.70, 0.72, 0.75], [0.55, 0.60, 0.68], [0.88, 0.70, 0.62], [0.45, 0.42, 0.40], [0.75, 0.80, 0.70]]
)
_GLASS_COLOURS = np.array([[0.15, 0.20, 0.28], [0.22, 0.30, 0.32], [0.10, 0.12, 0.14], [0.30, 0.38, 0.45]])
_CAR_COLOURS = np.array(
    [[0.90, 0.90, 0.90], [0.08, 0.08, 0.09], [0.60, 0.62, 0.64], [0.35, 0.36, 0.38], [0.65, 0.10, 0.10],
     [0.12, 0.22, 0.50], [0.15, 0.32, 0.20], [0.85, 0.75, 0.30], [0.45, 0.30, 0.20]]
)
_SIGN_COLOURS = np.array([[0.80, 0.08, 0.08], [0.10, 0.25, 0.70], [0.95, 0.80, 0.10], [0.92, 0.92, 0.92]])


@dataclass(frozen=True)
class StreetGrid:
    """Street centre lines x = xs[i] (north-south streets) and y = ys[j] (east-west streets), ascending,
    with road half widths (centre line to kerb) hx, hy and one sidewalk width for the world."""

    key: int
    xs: np.ndarray
    ys: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    sidewalk: float

    @classmethod
    def sample(cls, key: int, extent: float) -> StreetGrid:
        """A grid reaching at least ``extent`` metres from the origin in every direction; the line
        through the origin has index len // 2 and each line depends only on (key, its signed index)."""
        n = math.ceil(extent / 55.0) + 2
        signed = np.arange(-n, n + 1)
        lines, halves = [], []
        for axis in (0, 1):
            spans = 55.0 + 65.0 * hash_uniform(key, 11, axis, signed)
            lines.append(np.concatenate([-np.cumsum(spans[:n][::-1])[::-1], [0.0], np.cumsum(spans[n + 1:])]))
            kind = hash_uniform(key, 12, axis, signed)
            halves.append(np.select([kind < 0.5, kind < 0.85], [5.5, 7.0], 9.0))
        sidewalk = 2.5 + 2.0 * float(hash_uniform(key, 13))
        return cls(key, lines[0], lines[1], halves[0], halves[1], sidewalk)

    @property
    def centre(self) -> tuple[int, int]:
        return len(self.xs) // 2, len(self.ys) // 2

    def lanes(self, half_width: np.ndarray) -> np.ndarray:
        """Travel lanes per direction of a street with this half width."""
        return np.where(half_width >= 9.0, 2, 1)

    def nearest(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (N,) of the nearest x line and the nearest y line to points (x, y)."""
        return _nearest(self.xs, x), _nearest(self.ys, y)

    def block_kind(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Block kind of the block between x lines i, i+1 and y lines j, j+1."""
        u = hash_uniform(self.key, 21, i - self.centre[0], j - self.centre[1])
        return np.select([u < 0.74, u < 0.86, u < 0.94], [Block.BUILDINGS, Block.PARK, Block.PARKING], Block.LOT)

    def has_crossing(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether the intersection of x line i and y line j has zebra crossings."""
        return hash_uniform(self.key, 22, i - self.centre[0], j - self.centre[1]) < 0.45

    def block_rect(self, i: int, j: int) -> tuple[float, float, float, float]:
        """Slab rectangle (x0, x1, y0, y1) of block (i, j): kerb to kerb, sidewalks included."""
        return (self.xs[i] + self.hx[i], self.xs[i + 1] - self.hx[i + 1],
                self.ys[j] + self.hy[j], self.ys[j + 1] - self.hy[j + 1])


def _nearest(lines: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = np.clip(np.searchsorted(lines, v), 1, len(lines) - 1)
    return np.where(v - lines[k - 1] < lines[k] - v, k - 1, k)


@dataclass(frozen=True)
class Lighting:
    """Sun direction (3,) (unit, towards the sun), linear RGB colours (3,) of the sun, the ambient
    light and the sky at zenith and horizon (all float32), the haze distance (m) and the cloud cover
    (0: clear sky; the varied appearance only)."""

    sun_dir: np.ndarray
    sun: np.ndarray
    ambient: np.ndarray
    zenith: np.ndarray
    horizon: np.ndarray
    haze: float
    clouds: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Lighting:
        weather = rng.choice(3, p=[0.55, 0.3, 0.15])  # clear, low sun, overcast
        elevation = np.radians([rng.uniform(25, 65), rng.uniform(8, 22), 50.0][weather])
        azimuth = rng.uniform(0, 2 * np.pi)
        sun_dir = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
        tint = rng.uniform(0.94, 1.06, 3)
        sun, ambient, zenith, horizon, haze = [
            ([1.0, 0.96, 0.88], [0.30, 0.34, 0.40], [0.22, 0.42, 0.80], [0.70, 0.80, 0.92], 700.0),
            ([1.0, 0.74, 0.48], [0.30, 0.28, 0.32], [0.30, 0.40, 0.68], [0.95, 0.74, 0.55], 450.0),
            ([0.28, 0.28, 0.28], [0.62, 0.63, 0.66], [0.58, 0.60, 0.64], [0.80, 0.81, 0.82], 300.0),
        ][weather]
        gain = rng.uniform(0.85, 1.1)
        rgb = [np.asarray(c, np.float32) * tint.astype(np.float32) for c in (sun, ambient, zenith, horizon)]
        return cls(sun_dir.astype(np.float32), np.float32(gain) * rgb[0], *rgb[1:], haze * rng.uniform(0.8, 1.2))

    def varied(self, rng: np.random.Generator) -> Lighting:
        """The varied world's light: cloud cover up to 0.9 and a weaker sky fill (ambient times 0.4-1), so
        that shadows are darker beside the sun."""
        return dataclasses.replace(self, ambient=self.ambient * np.float32(rng.uniform(0.4, 1.0)),
                                   clouds=float(rng.uniform(0.0, 0.9)))


@dataclass
class World:
    """One triangle mesh with per-face and per-instance attributes.

    vertices (V, 3) float32 and faces (F, 3) int32 (world frame); per face: surface class (F,) uint8,
    instance (F,) int32, unit normal (F, 3) float32, and for facades the start s0 and length (F,) of
    the face along its horizontal tangent (-n_y, n_x), its height range z0, z1 (F,) and its
    sunlit fraction max(0, n . sun_dir) (F,). Per instance, planar: colour and second colour (3, I)
    (walls: wall and glass; others: only the first) and params (8, I) (buildings: rows FLOOR_H ...
    SHOPFRONT). varied: the varied appearance (shadows, facade weathering).
    """

    grid: StreetGrid
    lighting: Lighting
    vertices: np.ndarray
    faces: np.ndarray
    face_class: np.ndarray
    face_inst: np.ndarray
    face_normal: np.ndarray
    face_s0: np.ndarray
    face_length: np.ndarray
    face_z0: np.ndarray
    face_z1: np.ndarray
    face_sun: np.ndarray
    inst_colour: np.ndarray
    inst_colour2: np.ndarray
    inst_params: np.ndarray
    varied: bool = False

    @property
    def key(self) -> int:
        return self.grid.key


class _Instances:
    """Accumulates instance attributes; ``new`` returns the instance id."""

    def __init__(self):
        self.colour, self.colour2, self.params = [], [], []

    def new(self, colour, colour2=(0.0, 0.0, 0.0), params=(0.0,) * 8) -> int:
        self.colour.append(np.clip(colour, 0, 1))
        self.colour2.append(np.clip(colour2, 0, 1))
        self.params.append(params)
        return len(self.colour) - 1


def build_world(key: int, grid: StreetGrid, route: np.ndarray, radius: float = 140.0,
                appearance: str = "default") -> World:
    """Build the world around a route (P, 2) (x, y points along it): every block within ``radius`` m
    of the route is populated, each from its own random stream (key, block index); ``appearance``
    (one of APPEARANCES) ``varied`` adds clutter from a second stream per block, and clouds."""
    builder, inst = MeshBuilder(), _Instances()
    inst.new((0.0, 0.0, 0.0))  # _NO_INSTANCE, for faces whose pattern ignores instances
    lo, hi = route.min(0) - radius - 200.0, route.max(0) + radius + 200.0
    ground = np.array([[lo[0], lo[1], 0], [hi[0], lo[1], 0], [hi[0], hi[1], 0], [lo[0], hi[1], 0]])
    builder.add(ground, [[0, 1, 2], [0, 2, 3]], Surface.ROAD, _NO_INSTANCE)

    ci, cj = np.meshgrid(np.arange(len(grid.xs) - 1), np.arange(len(grid.ys) - 1), indexing="ij")
    cx, cy = (grid.xs[ci] + grid.xs[ci + 1]) / 2, (grid.ys[cj] + grid.ys[cj + 1]) / 2
    half_diagonal = 0.5 * np.hypot(grid.xs[ci + 1] - grid.xs[ci], grid.ys[cj + 1] - grid.ys[cj])
    distance, _ = cKDTree(route).query(np.stack([cx.ravel(), cy.ravel()], -1))
    near = distance < radius + half_diagonal.ravel()
    for i, j in zip(ci.ravel()[near], cj.ravel()[near]):
        rng = np.random.default_rng([key, 1, i - grid.centre[0] + _INDEX_OFFSET, j - grid.centre[1] + _INDEX_OFFSET])
        _block(builder, inst, grid, int(i), int(j), rng)
        if appearance == "varied":
            clutter_rng = np.random.default_rng([key, 5, i - grid.centre[0] + _INDEX_OFFSET, j - grid.centre[1] + _INDEX_OFFSET])
            _clutter(builder, inst, grid, int(i), int(j), clutter_rng)

    vertices, faces, classes, instances = builder.build()
    tri = vertices[faces].astype(np.float64)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    tangent = np.stack([-normal[:, 1], normal[:, 0]], -1)
    s = np.einsum("fvk,fk->fv", tri[..., :2], tangent)
    lighting = Lighting.sample(np.random.default_rng([key, 2]))
    if appearance == "varied":
        lighting = lighting.varied(np.random.default_rng([key, 6]))
    return World(
        grid, lighting, vertices, faces, classes, instances, normal.astype(np.float32),
        s.min(1).astype(np.float32), np.ptp(s, 1).astype(np.float32), tri[..., 2].min(1).astype(np.float32),
        tri[..., 2].max(1).astype(np.float32), np.clip(normal @ lighting.sun_dir, 0, 1).astype(np.float32),
        np.array(inst.colour, np.float32).T.copy(), np.array(inst.colour2, np.float32).T.copy(),
        np.array(inst.params, np.float32).T.copy(), appearance == "varied",
    )


def _block(builder: MeshBuilder, inst: _Instances, grid: StreetGrid, i: int, j: int, rng: np.random.Generator) -> None:
    x0, x1, y0, y1 = grid.block_rect(i, j)
    builder.boxes([x0, y0, 0], [x1, y1, KERB_HEIGHT], [Surface.KERB] * 4 + [Surface.ROAD, Surface.SLAB], _NO_INSTANCE)
    sw = grid.sidewalk
    inner = (x0 + sw, x1 - sw, y0 + sw, y1 - sw)
    kind = grid.block_kind(np.int64(i), np.int64(j))
    if kind == Block.BUILDINGS:
        _buildings(builder, inst, inner, rng)
    elif kind == Block.PARKING:
        _parking_lot(builder, inst, inner, rng)
    else:
        n_trees = rng.integers(12, 30) if kind == Block.PARK else rng.integers(0, 5)
        xy = rng.uniform([inner[0] + 3, inner[2] + 3], [inner[1] - 3, inner[3] - 3], (n_trees, 2))
        for p in xy:
            _tree(builder, inst, p, rng)

    # The four kerbs: (start, end, outward normal towards the street).
    edges = [((x0, y0), (x1, y0), (0, -1)), ((x0, y1), (x1, y1), (0, 1)),
             ((x0, y0), (x0, y1), (-1, 0)), ((x1, y0), (x1, y1), (1, 0))]
    for start, end, outward in edges:
        _street_side(builder, inst, np.array(start), np.array(end), np.array(outward, float), sw, rng)


def _buildings(builder: MeshBuilder, inst: _Instances, inner, rng: np.random.Generator) -> None:
    """Two rows of buildings along the block's long sides, courtyards between them."""
    x0, x1, y0, y1 = inner
    along_x = (x1 - x0) >= (y1 - y0)
    if not along_x:  # work in a frame whose rows run along "u"
        x0, x1, y0, y1 = y0, y1, x0, x1
    row_depth = (y1 - y0) / 2
    floors_lo, floors_hi = [(2, 4), (3, 7), (5, 14)][rng.choice(3, p=[0.4, 0.4, 0.2])]
    for front, direction in ((y0, 1.0), (y1, -1.0)):
        u = x0
        while x1 - u > 6.0:
            width = rng.uniform(8.0, 28.0)
            if x1 - u - width < 8.0:
                width = x1 - u
            if rng.random() < 0.15:  # a gap between buildings
                u += min(width, rng.uniform(3.0, 10.0))
                continue
            setback = 0.0 if rng.random() < 0.6 else rng.uniform(0.5, 4.0)
            depth = rng.uniform(min(10.0, row_depth - setback), max(10.0, min(25.0, row_depth - setback)))
            params = _building_params(rng)
            floors = rng.integers(floors_lo, floors_hi + 1)
            height = params[GROUND_H] + (floors - 1) * params[FLOOR_H] + rng.uniform(0.3, 1.2)
            v0, v1 = front + direction * setback, front + direction * (setback + depth)
            boxes = [((u, min(v0, v1), KERB_HEIGHT), (u + width, max(v0, v1), KERB_HEIGHT + height))]
            if floors >= 4 and rng.random() < 0.3:  # a set-back upper tier
                inset = rng.uniform(1.5, 4.0)
                w0, w1 = v0 + direction * inset, v1
                extra = rng.integers(1, 4) * params[FLOOR_H]
                boxes.append(((u + inset, min(w0, w1), KERB_HEIGHT + height),
                              (u + width - inset, max(w0, w1), KERB_HEIGHT + height + extra)))
            wall = _WALL_COLOURS[rng.integers(len(_WALL_COLOURS))] * rng.uniform(0.85, 1.1, 3)
            glass = _GLASS_COLOURS[rng.integers(len(_GLASS_COLOURS))] * rng.uniform(0.8, 1.2, 3)
            building = inst.new(wall, glass, params)
            lo, hi = np.array([b[0] for b in boxes]), np.array([b[1] for b in boxes])
            if not along_x:
                lo, hi = lo[:, [1, 0, 2]], hi[:, [1, 0, 2]]
            builder.boxes(lo, hi, [Surface.WALL] * 4 + [Surface.ROOF] * 2, building)
            u += width


def _building_params(rng: np.random.Generator) -> np.ndarray:
    params = np.zeros(8)
    params[FLOOR_H] = rng.uniform(2.8, 3.6)
    params[GROUND_H] = params[FLOOR_H] + rng.uniform(0.0, 1.2)
    params[WIN_SPACING] = rng.uniform(2.2, 3.8)
    params[WIN_W] = rng.uniform(0.8, params[WIN_SPACING] - 0.7)
    params[WIN_H] = rng.uniform(1.1, params[FLOOR_H] - 1.2)
    params[SILL] = rng.uniform(0.6, params[FLOOR_H] - params[WIN_H] - 0.3)
    params[STYLE] = rng.choice(3, p=[0.65, 0.2, 0.15])
    params[SHOPFRONT] = float(rng.random() < 0.35)
    return params


def _parking_lot(builder: MeshBuilder, inst: _Instances, inner, rng: np.random.Generator) -> None:
    """Rows of cars parked nose-in along x on the lot's stall grid (see materials.py)."""
    x0, x1, y0, y1 = inner
    for row_y in np.arange(y0 + 3.0, y1 - 3.0, 6.5):
        for x in np.arange(x0 + 1.5, x1 - 1.5, 2.6):
            if rng.random() < 0.55:
                _car(builder, inst, np.array([x + 1.3, row_y]), along_x=False, rng=rng, z=KERB_HEIGHT)


def _street_side(builder: MeshBuilder, inst: _Instances, start: np.ndarray, end: np.ndarray, outward: np.ndarray,
                 sw: float, rng: np.random.Generator) -> None:
    """Trees and lights on the sidewalk along one block edge, parked cars in the adjacent parking lane."""
    direction = (end - start) / np.linalg.norm(end - start)
    length = float(np.linalg.norm(end - start))
    if rng.random() < 0.55:  # a row of street trees
        spacing = rng.uniform(7.0, 14.0)
        for a in np.arange(rng.uniform(3.0, spacing), length - 3.0, spacing):
            if rng.random() < 0.85:
                _tree(builder, inst, start + direction * (a + rng.uniform(-1, 1)) - outward * min(1.2, sw / 2), rng)
    spacing = rng.uniform(22.0, 38.0)
    for a in np.arange(rng.uniform(4.0, spacing), length - 4.0, spacing):
        _street_light(builder, inst, start + direction * a - outward * 0.5, outward)
    if rng.random() < 0.35:
        corner = start if rng.random() < 0.5 else end
        inward = direction if corner is start else -direction
        _sign(builder, inst, corner + inward * 1.5 - outward * 0.4, outward, rng)

    lane = start + outward * (PARKING_WIDTH / 2 + 0.05)
    if rng.random() < 0.8:
        a = rng.uniform(5.0, 9.0)  # clear of the crossing
        while a < length - 6.0:
            car_length = rng.uniform(3.8, 4.9)
            if rng.random() < 0.65:
                _car(builder, inst, lane + direction * (a + car_length / 2), along_x=abs(direction[0]) > 0.5,
                     rng=rng, length=car_length)
            a += car_length + rng.uniform(0.6, 4.0)


def _tree(builder: MeshBuilder, inst: _Instances, xy: np.ndarray, rng: np.random.Generator) -> None:
    trunk_h = rng.uniform(2.6, 4.5)
    r = rng.uniform(1.4, 3.2)
    crown = inst.new(np.array([0.18, 0.36, 0.12]) * rng.uniform(0.7, 1.3, 3))
    builder.prisms(xy, KERB_HEIGHT, KERB_HEIGHT + trunk_h + r * 0.5, rng.uniform(0.12, 0.25), Surface.TRUNK,
                   inst.new(np.array([0.35, 0.26, 0.18]) * rng.uniform(0.8, 1.2)), sides=5)
    radii = r * np.array([rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.4)])
    builder.blob(np.array([xy[0], xy[1], KERB_HEIGHT + trunk_h + radii[2]]), radii, Surface.FOLIAGE, crown, rng)


def _street_light(builder: MeshBuilder, inst: _Instances, xy: np.ndarray, outward: np.ndarray) -> None:
    pole = inst.new((0.30, 0.32, 0.33))
    height = 7.0
    builder.prisms(xy, KERB_HEIGHT, KERB_HEIGHT + height, 0.09, Surface.POLE, pole)
    tip = xy + outward * 1.8
    lo, hi = np.minimum(xy, tip) - 0.06, np.maximum(xy, tip) + 0.06
    builder.boxes([lo[0], lo[1], height - 0.1], [hi[0], hi[1], height + 0.05], Surface.POLE, pole)
    builder.boxes([tip[0] - 0.3, tip[1] - 0.3, height - 0.25], [tip[0] + 0.3, tip[1] + 0.3, height - 0.1],
                  Surface.POLE, pole, bottom=True)


def _sign(builder: MeshBuilder, inst: _Instances, xy: np.ndarray, outward: np.ndarray, rng: np.random.Generator) -> None:
    builder.prisms(xy, KERB_HEIGHT, 2.6, 0.04, Surface.POLE, inst.new((0.55, 0.56, 0.57)))
    half = np.where(np.abs(outward) > 0.5, 0.03, 0.35)
    builder.boxes([xy[0] - half[0], xy[1] - half[1], 2.0], [xy[0] + half[0], xy[1] + half[1], 2.7],
                  Surface.SIGN, inst.new(_SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))]), bottom=True)


def _car(builder: MeshBuilder, inst: _Instances, xy: np.ndarray, along_x: bool, rng: np.random.Generator,
         length: float | None = None, z: float = 0.0) -> None:
    """A parked car: body, glass cabin and four wheels, its length along x (along_x) or y."""
    length = rng.uniform(3.8, 4.9) if length is None else length
    width = rng.uniform(1.7, 1.95)
    cabin_len = length * rng.uniform(0.45, 0.6)
    cabin_shift = rng.uniform(-0.1, 0.0) * length
    ax = [0, 1] if along_x else [1, 0]  # (along, across) -> (x, y)

    def box(a0, a1, c0, c1, z0, z1):
        lo, hi = np.zeros(3), np.zeros(3)
        lo[ax], hi[ax] = [a0, c0], [a1, c1]
        lo[2], hi[2] = z + z0, z + z1
        return lo + [xy[0], xy[1], 0], hi + [xy[0], xy[1], 0]

    body = inst.new(_CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.9, 1.1))
    top = rng.uniform(1.35, 1.6)
    parts = [box(-length / 2, length / 2, -width / 2, width / 2, 0.3, 0.95)]
    parts.append(box(cabin_shift - cabin_len / 2, cabin_shift + cabin_len / 2, -width / 2 + 0.08, width / 2 - 0.08, 0.95, top))
    lo, hi = map(np.array, zip(*parts))
    builder.boxes(lo[:1], hi[:1], Surface.CAR_BODY, body, bottom=True)
    builder.boxes(lo[1:], hi[1:], [Surface.CAR_GLASS] * 4 + [Surface.CAR_BODY] * 2, body)
    wheels = [box(a - 0.33, a + 0.33, c - 0.12, c + 0.12, 0.0, 0.62)
              for a in (-0.32 * length, 0.32 * length) for c in (-width / 2 + 0.1, width / 2 - 0.1)]
    lo, hi = map(np.array, zip(*wheels))
    builder.boxes(lo, hi, Surface.TYRE, inst.new((0.04, 0.04, 0.04)))


_CLUTTER_COLOURS = np.array(
    [[0.15, 0.15, 0.16], [0.45, 0.46, 0.47], [0.20, 0.35, 0.22], [0.55, 0.35, 0.15], [0.80, 0.78, 0.72],
     [0.12, 0.20, 0.40], [0.60, 0.12, 0.10]]
)
_CLOTHES = np.array([[0.10, 0.10, 0.12], [0.25, 0.28, 0.40], [0.55, 0.50, 0.42], [0.70, 0.15, 0.15], [0.85, 0.85, 0.85]])


def _clutter(builder: MeshBuilder, inst: _Instances, grid: StreetGrid, i: int, j: int, rng: np.random.Generator) -> None:
    """The varied world's street furniture on block (i, j): along each kerb a run of bollards, bins,
    bushes, pedestrians and now and then a fence or hedge on the sidewalk's inner edge, and a parked
    van in the parking lane. Boxes are collected and added at once (world building stays fast)."""
    x0, x1, y0, y1 = grid.block_rect(i, j)
    sw = grid.sidewalk
    lows, highs, classes, instances = [], [], [], []

    def box(lo, hi, surface: int, instance: int) -> None:
        lows.append(lo)
        highs.append(hi)
        classes.append(surface)
        instances.append(instance)

    edges = [((x0, y0), (x1, y0), (0, -1)), ((x0, y1), (x1, y1), (0, 1)),
             ((x0, y0), (x0, y1), (-1, 0)), ((x1, y0), (x1, y1), (1, 0))]
    for start, end, outward in edges:
        start, end, outward = np.array(start), np.array(end), np.array(outward, float)
        direction = (end - start) / np.linalg.norm(end - start)
        length = float(np.linalg.norm(end - start))
        a = rng.uniform(2.0, 6.0)
        while a < length - 3.0:
            at = start + direction * a
            kind = rng.choice(5, p=[0.3, 0.15, 0.25, 0.2, 0.1])
            if kind == 0:  # a row of bollards at the kerb
                count = int(rng.integers(3, 8))
                centres = at + direction * 1.5 * np.arange(count)[:, None] - outward * 0.35
                builder.prisms(centres, KERB_HEIGHT, KERB_HEIGHT + rng.uniform(0.8, 1.1), 0.08, Surface.POLE,
                               inst.new(_CLUTTER_COLOURS[rng.integers(len(_CLUTTER_COLOURS))]), sides=6)
            elif kind == 1:  # a bin
                xy = at - outward * rng.uniform(0.4, 1.0)
                half = rng.uniform(0.25, 0.45)
                box([xy[0] - half, xy[1] - half, KERB_HEIGHT], [xy[0] + half, xy[1] + half, KERB_HEIGHT + rng.uniform(0.8, 1.3)],
                    Surface.POLE, inst.new(_CLUTTER_COLOURS[rng.integers(len(_CLUTTER_COLOURS))]))
            elif kind == 2:  # a bush
                r = rng.uniform(0.4, 1.0)
                crown = inst.new(np.array([0.20, 0.33, 0.12]) * rng.uniform(0.6, 1.3, 3))
                centre = at - outward * min(sw - r, rng.uniform(0.8, 2.0))
                builder.blob(np.array([centre[0], centre[1], KERB_HEIGHT + 0.7 * r]), r * rng.uniform(0.8, 1.2, 3),
                             Surface.FOLIAGE, crown, rng)
            elif kind == 3:  # a pedestrian: legs, torso, neck and head
                xy = at - outward * rng.uniform(0.5, sw - 0.5)
                height = rng.uniform(1.55, 1.9)
                clothes = inst.new(_CLOTHES[rng.integers(len(_CLOTHES))] * rng.uniform(0.8, 1.2))
                skin = inst.new((0.55, 0.42, 0.33))
                for lo, hi, half, part in ((0.0, 0.47, 0.14, clothes), (0.47, 0.82, 0.2, clothes),
                                           (0.82, 0.9, 0.06, skin), (0.9, 1.0, 0.1, skin)):
                    box([xy[0] - half, xy[1] - half, KERB_HEIGHT + lo * height],
                        [xy[0] + half, xy[1] + half, KERB_HEIGHT + hi * height], Surface.CAR_BODY, part)
            else:  # a fence or hedge along the sidewalk's inner edge
                run = min(rng.uniform(6.0, 20.0), length - 3.0 - a)
                inner = at - outward * (sw - 0.15)
                tip = inner + direction * run
                hedge = rng.random() < 0.5
                thickness = 0.1 if hedge else 0.03
                colour = (np.array([0.18, 0.32, 0.12]) * rng.uniform(0.7, 1.2, 3) if hedge
                          else _CLUTTER_COLOURS[rng.integers(len(_CLUTTER_COLOURS))])
                top = KERB_HEIGHT + (rng.uniform(0.8, 1.6) if hedge else rng.uniform(0.9, 1.8))
                lo, hi = np.minimum(inner, tip) - thickness, np.maximum(inner, tip) + thickness
                box([lo[0], lo[1], KERB_HEIGHT], [hi[0], hi[1], top], Surface.FOLIAGE if hedge else Surface.POLE,
                    inst.new(colour))
                a += run
            a += rng.uniform(4.0, 14.0)
        if rng.random() < 0.25:  # a van in the parking lane
            van_length = rng.uniform(5.2, 6.8)
            a = rng.uniform(6.0, max(6.5, length - van_length - 6.0))
            xy = start + outward * (PARKING_WIDTH / 2 + 0.05) + direction * (a + van_length / 2)
            half_len, half_w = van_length / 2, rng.uniform(0.95, 1.1)
            extent = np.array([half_len, half_w]) if abs(direction[0]) > 0.5 else np.array([half_w, half_len])
            body = inst.new(_CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.9, 1.1))
            builder.boxes([xy[0] - extent[0], xy[1] - extent[1], 0.3], [xy[0] + extent[0], xy[1] + extent[1], rng.uniform(2.2, 2.8)],
                          Surface.CAR_BODY, body, bottom=True)
    if lows:
        builder.boxes(np.array(lows), np.array(highs), np.repeat(np.array(classes)[:, None], 6, 1), np.array(instances))
