"""Surface appearance of the street world: albedo (linear RGB) for the cameras and reflectance for
the LiDAR at ray hits, from the face's surface class and procedural patterns evaluated at the hit
point (lane markings and crossings, paving, grass, facades with windows and doors, foliage).

Patterns vary per instance and per window or tile through hashing, so nothing repeats exactly.
Colours are planar (3, N) arrays: NumPy broadcasts over long rows much faster than over (N, 3).
"""

from __future__ import annotations

import numpy as np

from .noise import cell_noise, hash_uniform, value_noise
from .world import (
    FLOOR_H,
    GROUND_H,
    KERB_HEIGHT,
    LANE_WIDTH,
    PARKING_WIDTH,
    SHOPFRONT,
    SILL,
    STYLE,
    WIN_H,
    WIN_SPACING,
    WIN_W,
    Block,
    Facade,
    Surface,
    World,
)


def _rgb(r: float, g: float, b: float) -> np.ndarray:
    return np.array([[r], [g], [b]], np.float32)


_WHITE = _rgb(0.80, 0.80, 0.78)
_YELLOW = _rgb(0.85, 0.65, 0.15)
_ASPHALT = _rgb(0.20, 0.20, 0.21)
_PAVING = _rgb(0.56, 0.54, 0.50)
_GRASS = _rgb(0.20, 0.38, 0.11)
_DIRT = _rgb(0.45, 0.38, 0.28)
_DOOR = _rgb(0.25, 0.16, 0.10)
_LIT = _rgb(0.95, 0.80, 0.45)
_BLIND = _rgb(0.62, 0.56, 0.46)
_PLAIN = {Surface.KERB: _rgb(0.62, 0.62, 0.60), Surface.ROOF: _rgb(0.30, 0.29, 0.29),
          Surface.CAR_GLASS: _rgb(0.07, 0.08, 0.10)}  # other plain classes take the instance colour

# The varied world's albedo grain per surface class: the albedo is scaled by 1 + g (u - 0.5), u uniform
# per 8 cm cell (asphalt and paving grain, leaves and the gaps between them, bark).
_GRAIN = np.zeros(len(Surface), np.float32)
_GRAIN[[Surface.ROAD, Surface.SLAB, Surface.KERB, Surface.WALL, Surface.ROOF, Surface.TRUNK, Surface.FOLIAGE]] = (
    0.5, 0.6, 0.4, 0.25, 0.4, 0.8, 1.6)

# LiDAR reflectance of the classes whose pattern does not change it.
_REFLECTANCE = {
    Surface.KERB: 0.35, Surface.ROOF: 0.2, Surface.POLE: 0.45, Surface.SIGN: 0.9, Surface.TRUNK: 0.3,
    Surface.CAR_BODY: 0.45, Surface.CAR_GLASS: 0.05, Surface.TYRE: 0.05,
}


def surface(world: World, prim: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (3, N) float32 in [0, 1] and LiDAR reflectance (N,) float32 in [0, 1] of hits on faces
    prim (N,) at world points (3, N). The varied world adds fine grain to the albedo (``_GRAIN``)."""
    classes = world.face_class[prim]
    albedo = np.empty((3, len(prim)), np.float32)
    reflectance = np.empty(len(prim), np.float32)
    for surface_class in np.flatnonzero(np.bincount(classes, minlength=len(Surface))):
        rows = np.flatnonzero(classes == surface_class)
        p, face = np.take(points, rows, axis=1), prim[rows]
        inst = world.face_inst[face]
        if surface_class == Surface.ROAD:
            a, r = _road(world, p[0], p[1])
        elif surface_class == Surface.SLAB:
            a, r = _slab(world, p[0], p[1])
        elif surface_class == Surface.WALL:
            a, r = _facade(world, face, inst, p)
        elif surface_class == Surface.FOLIAGE:
            a, r = _foliage(world, inst, p)
        else:
            colour = _PLAIN.get(surface_class)
            colour = np.take(world.inst_colour, inst, axis=1) if colour is None else colour
            a = colour * (0.9 + 0.2 * cell_noise(world.key, p[0] + p[2], p[1] - p[2], 0.5))
            r = np.full(len(rows), _REFLECTANCE[Surface(surface_class)], np.float32)
        albedo[:, rows], reflectance[rows] = a, r
    if world.varied:
        cells = np.floor(points / np.float32(0.08)).astype(np.int64)
        grain = hash_uniform(world.key + 70, cells[0], cells[1], cells[2]) - np.float32(0.5)
        albedo *= 1 + _GRAIN[classes] * grain
    return albedo, reflectance


def _asphalt(key: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brightness (N,) of asphalt: large stains, repair patches and grain."""
    shade = 0.8 + 0.35 * value_noise(key, x, y, 6.0) + 0.12 * (cell_noise(key + 1, x, y, 0.12) - 0.5)
    patch = cell_noise(key + 2, x + 3.1, y - 1.7, 5.0) < 0.07
    return np.where(patch, np.float32(0.7), np.float32(1.0)) * shade


def _road(world: World, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Asphalt with centre lines (dashed, or double on wide streets), lane dividers, parking-lane
    edges, zebra crossings at some intersections and stop lines before them."""
    grid = world.grid
    i, j = grid.nearest(x, y)
    dx, dy = x - grid.xs[i], y - grid.ys[j]
    hx, hy = grid.hx[i], grid.hy[j]
    crossing = grid.has_crossing(i, j)
    white = np.zeros(len(x), bool)
    centre = np.zeros(len(x), bool)
    # A north-south street (lateral dx, along y) and an east-west one (lateral dy, along x); the
    # incoming lane of the right-hand traffic towards the crossing has lateral * other < 0 resp. > 0.
    for lat, along, other, half, other_half, incoming in (
        (dx, y, dy, hx, hy, dx * dy < 0), (dy, x, dx, hy, hx, dx * dy > 0),
    ):
        a_lat, a_other = np.abs(lat), np.abs(other)
        street = (a_lat < half) & (a_other > other_half)
        two_lanes = grid.lanes(half) == 2
        dash = np.mod(along, 9.0) < 3.0
        centre |= street & np.where(two_lanes, np.abs(a_lat - 0.15) < 0.06, (a_lat < 0.07) & dash)
        white |= street & two_lanes & (np.abs(a_lat - LANE_WIDTH) < 0.07) & dash
        white |= street & (np.abs(a_lat - (half - PARKING_WIDTH)) < 0.06)
        white |= (street & crossing & (a_other > other_half + 1.0) & (a_other < other_half + 4.0)
                  & (a_lat < half - 0.4) & (np.mod(lat, 1.0) < 0.5))
        white |= street & incoming & (a_other > other_half + 4.6) & (a_other < other_half + 5.1) & (a_lat < half - PARKING_WIDTH)
    shade = _asphalt(world.key, x, y)
    centre_colour = _YELLOW if hash_uniform(world.key, 31) < 0.4 else _WHITE
    albedo = np.where(centre, centre_colour, np.where(white, _WHITE, _ASPHALT * shade))
    reflectance = np.where(white | centre, np.float32(0.75), 0.1 * shade)
    return albedo, reflectance


def _slab(world: World, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sidewalks along the kerbs; inside, courtyards, park grass, a parking lot's stalls or dirt."""
    grid, key = world.grid, world.key
    i, j = grid.nearest(x, y)
    bi = np.clip(np.searchsorted(grid.xs, x) - 1, 0, len(grid.xs) - 2)
    bj = np.clip(np.searchsorted(grid.ys, y) - 1, 0, len(grid.ys) - 2)
    kind = grid.block_kind(bi, bj)
    sidewalk = (np.abs(x - grid.xs[i]) - grid.hx[i] < grid.sidewalk) | (np.abs(y - grid.ys[j]) - grid.hy[j] < grid.sidewalk)
    courtyard_grass = hash_uniform(key, 32, bi, bj) < 0.5
    grass = ~sidewalk & ((kind == Block.PARK) | ((kind == Block.BUILDINGS) & courtyard_grass))
    dirt = ~sidewalk & (kind == Block.LOT)
    lot = ~sidewalk & (kind == Block.PARKING)

    tile = np.where(sidewalk, np.float32(0.5), np.float32(0.8))
    seam = (np.mod(x, tile) < 0.03) | (np.mod(y, tile) < 0.03)
    paving = (0.85 + 0.25 * cell_noise(key + 3, x, y, 0.5)) * (0.9 + 0.2 * value_noise(key + 4, x, y, 4.0))
    paving *= np.where(seam, np.float32(0.7), np.float32(1.0))
    lawn = (0.65 + 0.6 * value_noise(key + 5, x, y, 3.0)) * (0.85 + 0.3 * cell_noise(key + 6, x, y, 0.15))
    soil = 0.75 + 0.5 * value_noise(key + 7, x, y, 2.0)
    x0 = grid.xs[bi] + grid.hx[bi] + grid.sidewalk
    y0 = grid.ys[bj] + grid.hy[bj] + grid.sidewalk
    v = np.mod(y - y0 - 3.0, 6.5)
    stall = lot & (np.mod(x - x0 - 1.5, 2.6) < 0.1) & ((v < 2.5) | (v > 4.0))  # see world._parking_lot
    asphalt = _asphalt(key, x, y)

    albedo = np.select([stall, lot, grass, dirt], [_WHITE, _ASPHALT * asphalt, _GRASS * lawn, _DIRT * soil],
                       _PAVING * paving)
    reflectance = np.select([stall, lot, grass, dirt], [0.75, 0.1 * asphalt, 0.5, 0.25], 0.3).astype(np.float32)
    return albedo, reflectance


def _facade(world: World, face: np.ndarray, inst: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walls with a per-building window layout (punched, ribbon or curtain wall), shop fronts or a
    door on the ground floor, per-window glass variation (lit, blinds), frames and dirt."""
    key = world.key
    nx, ny = world.face_normal[:, 0][face], world.face_normal[:, 1][face]
    s0, z0 = world.face_s0[face], world.face_z0[face]
    s = p[1] * nx - p[0] * ny - s0  # along the wall, from its start
    length = world.face_length[face]
    h = p[2] - KERB_HEIGHT
    top = world.face_z1[face] - KERB_HEIGHT
    floor_h, ground_h, win_w, win_h, spacing, sill, style, shopfront = (
        world.inst_params[c][inst] for c in (FLOOR_H, GROUND_H, WIN_W, WIN_H, WIN_SPACING, SILL, STYLE, SHOPFRONT)
    )
    wall_key = np.round(s0 * 7 + z0).astype(np.int64)

    n_cols = np.maximum(np.floor(length / spacing), 1)
    u = (s - (length - n_cols * spacing) / 2) / spacing
    col = np.floor(u)
    fu = np.abs(u - col - 0.5) * spacing  # distance from the column's centre line (m)
    storey = np.floor((h - ground_h) / floor_h)
    fz = h - ground_h - storey * floor_h  # height within the storey (m)
    upper = (h >= ground_h) & (storey < np.floor((top - ground_h - 0.4) / floor_h))
    in_cols = (col >= 0) & (col < n_cols)
    half_w = win_w / 2

    in_band = (fz > sill) & (fz < sill + win_h)
    window = np.select(
        [style == Facade.PUNCHED, style == Facade.RIBBON],
        [in_cols & (fu < half_w) & in_band, (fu < spacing / 2 - 0.12) & in_band],
        (np.abs(np.mod(s, 1.5) - 0.75) < 0.68) & (fz > 0.2) & (fz < floor_h - 0.5),
    ) & upper
    frame = window & (style == Facade.PUNCHED) & ((half_w - fu < 0.07) | (fz - sill < 0.07) | (sill + win_h - fz < 0.07))

    ground = (h < ground_h) & (h >= 0)
    shop = ground & (shopfront > 0) & (h > 0.5) & (h < ground_h - 0.6) & (np.mod(s + 0.2, 4.0) > 0.4)
    door_at = length * (0.15 + 0.7 * hash_uniform(key, 41, inst, wall_key))
    door = ground & (z0 < 1.0) & (np.abs(s - door_at) < 0.65) & (h < 2.3)
    ground_window = ground & (shopfront == 0) & in_cols & (fu < half_w) & (h > 1.0) & (h < ground_h - 0.5)
    glass = np.flatnonzero((window | shop | ground_window) & ~frame & ~door)

    dirt = (0.88 + 0.24 * value_noise(key + 8, s + 131.0 * inst, h, 2.5)) * (0.82 + 0.18 * np.clip(h / 1.5, 0, 1))
    if world.varied:
        dirt = dirt * _weathering(key, inst, s, h, floor_h)
    albedo = np.take(world.inst_colour, inst, axis=1) * dirt
    trim = np.where(hash_uniform(key, 42, inst) < 0.5, np.float32(0.85), np.float32(0.2))
    albedo = np.where(frame, trim, np.where(door, _DOOR * (0.6 + 0.8 * hash_uniform(key, 43, inst)), albedo))

    g_inst, g_col = inst[glass], col[glass].astype(np.int64)
    pane = hash_uniform(key, 44, g_inst, wall_key[glass], storey[glass].astype(np.int64), g_col)
    tint = np.take(world.inst_colour2, g_inst, axis=1) * (0.6 + hash_uniform(key, 45, g_inst, g_col))
    albedo[:, glass] = np.select([pane < 0.05, pane < 0.22], [_LIT, _BLIND * (0.6 + 2 * pane)], tint)
    reflectance = 0.15 + 0.4 * albedo.mean(0)
    reflectance[glass] = 0.04
    return albedo, reflectance


def _weathering(key: int, inst: np.ndarray, s: np.ndarray, h: np.ndarray, floor_h: np.ndarray) -> np.ndarray:
    """The varied world's facade texture, a brightness factor (N,): rain streaks (features 0.4 m wide,
    3 m tall) and, on half the buildings, cladding panels with dark seams at every floor."""
    streaks = 0.78 + 0.3 * value_noise(key + 9, 8.0 * s + 1009.0 * inst, h, 3.0)
    panel_w = 1.2 + 1.8 * hash_uniform(key, 46, inst)
    seam = (np.mod(s, panel_w) < 0.05) | (np.mod(h, floor_h) < 0.05)
    cladding = hash_uniform(key, 47, inst) < 0.5
    return streaks * np.where(cladding & seam, np.float32(0.6), np.float32(1.0))


def _foliage(world: World, inst: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaves: the crown's colour modulated per 0.3 m cell. The varied world adds leaf clusters per 0.12 m cell:
    a quarter are gaps into the dark inside of the crown, a sixth glossy leaves; the LiDAR reflectance stays."""
    cells = np.floor(p / 0.3).astype(np.int64)
    leaf = hash_uniform(world.key, 51, cells[0], cells[1], cells[2])
    albedo = np.take(world.inst_colour, inst, axis=1) * (0.6 + 0.8 * leaf)
    if world.varied:
        fine = np.floor(p / np.float32(0.12)).astype(np.int64)
        cluster = hash_uniform(world.key + 71, fine[0], fine[1], fine[2])
        albedo *= np.select([cluster < 0.25, cluster > 5 / 6], [np.float32(0.3), np.float32(1.8)], np.float32(1.0))
    return albedo, 0.35 + 0.25 * leaf
