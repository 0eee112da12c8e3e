"""The vehicle's route: a random drive along the street grid, in the right-hand lane, turning at
crossings on rounded corners, sampled at a few metres per frame.

Positions are (x, y) in the world frame (x east, y north, metres); yaw is the heading, counter-
clockwise from east (radians).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import LANE_WIDTH, StreetGrid

_DIRECTIONS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # east, north, west, south


@dataclass(frozen=True)
class Route:
    """A dense centre line of the driven lane: points (P, 2) and arc length (P,) (m)."""

    points: np.ndarray
    arc: np.ndarray

    @classmethod
    def plan(cls, grid: StreetGrid, length: float, rng: np.random.Generator) -> Route:
        """Drive at least ``length`` metres from the grid's centre intersection, choosing straight on
        (55 %), left or right at every crossing; one random draw per crossing, so a longer route
        extends a shorter one."""
        node = np.array(grid.centre)
        heading = int(rng.integers(4))
        nodes, headings, travelled = [node], [heading], 0.0
        while travelled < 1.15 * length + 50.0:  # a turn cuts at most ~6 m off a >= 55 m leg
            step = _DIRECTIONS[heading]
            nxt = node + step
            travelled += abs(grid.xs[nxt[0]] - grid.xs[node[0]]) + abs(grid.ys[nxt[1]] - grid.ys[node[1]])
            node = nxt
            nodes.append(node)
            heading = (heading + rng.choice([0, 1, -1], p=[0.55, 0.225, 0.225])) % 4
            headings.append(heading)
        centres = np.array([[grid.xs[i], grid.ys[j]] for i, j in nodes])
        headings = np.array(headings)
        right = _DIRECTIONS[(headings - 1) % 4].astype(float)  # right of each heading
        # The lane polyline: right of the incoming leg at every node, and of the outgoing one too
        # where the route turns (legs are perpendicular there).
        offset = LANE_WIDTH / 2
        corners = centres + offset * np.concatenate([right[:1], right[:-1]])
        turns = np.flatnonzero(headings[1:-1] != headings[:-2]) + 1
        corners[turns] += offset * right[turns]
        points = _round_corners(corners, radius=7.0)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
        keep = np.concatenate([[True], np.diff(arc) > 1e-9])
        return cls(points[keep], arc[keep])

    def sample(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 2) and yaw (N,) at arc lengths s (N,)."""
        x = np.interp(s, self.arc, self.points[:, 0])
        y = np.interp(s, self.arc, self.points[:, 1])
        d = np.diff(self.points, axis=0)
        yaw_seg = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
        mid = (self.arc[:-1] + self.arc[1:]) / 2
        return np.stack([x, y], -1), np.interp(s, mid, yaw_seg)


def _round_corners(corners: np.ndarray, radius: float, steps: int = 24) -> np.ndarray:
    """Replace each interior corner of a polyline (N, 2) by a quadratic Bezier curve that leaves the
    legs ``radius`` m (at most half a leg) before and after the corner."""
    out = [corners[0]]
    for a, b, c in zip(corners[:-2], corners[1:-1], corners[2:]):
        u, v = b - a, c - b
        if abs(u[0] * v[1] - u[1] * v[0]) < 1e-9:  # straight on
            continue
        r = min(radius, np.linalg.norm(u) / 2, np.linalg.norm(v) / 2)
        p0, p2 = b - r * u / np.linalg.norm(u), b + r * v / np.linalg.norm(v)
        t = np.linspace(0, 1, steps)[:, None]
        out.extend((1 - t) ** 2 * p0 + 2 * t * (1 - t) * b + t**2 * p2)
    out.append(corners[-1])
    return np.array(out)
