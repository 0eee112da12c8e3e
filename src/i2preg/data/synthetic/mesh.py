"""A triangle-soup builder for the street world: boxes, prisms and blobs, each face labelled with a
surface class and an object instance."""

from __future__ import annotations

import numpy as np
import trimesh

# Two outward (counter-clockwise seen from outside) triangles per box side, in the order
# -x, +x, -y, +y, -z, +z; box corner c has offsets (c & 1, c >> 1 & 1, c >> 2 & 1) in x, y, z.
_BOX_FACES = np.array(
    [[0, 4, 6], [0, 6, 2], [1, 7, 5], [1, 3, 7], [0, 1, 5], [0, 5, 4],
     [2, 6, 7], [2, 7, 3], [0, 2, 3], [0, 3, 1], [4, 5, 7], [4, 7, 6]]
)
_BOX_CORNERS = np.array([[c & 1, c >> 1 & 1, c >> 2 & 1] for c in range(8)], dtype=np.float64)
_SPHERE = trimesh.creation.icosphere(subdivisions=1)


class MeshBuilder:
    """Collects triangles (world frame, metres) with a surface class and an instance id per face."""

    def __init__(self):
        self._vertices: list[np.ndarray] = []
        self._faces: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._instances: list[np.ndarray] = []
        self._count = 0

    def add(self, vertices: np.ndarray, faces: np.ndarray, classes: np.ndarray, instances: np.ndarray) -> None:
        """Append vertices (V, 3) and faces (F, 3) indexing them, with per-face classes and instances (F,)."""
        self._vertices.append(np.asarray(vertices, np.float64))
        self._faces.append(np.asarray(faces, np.int64) + self._count)
        self._classes.append(np.broadcast_to(np.asarray(classes, np.uint8), (len(faces),)))
        self._instances.append(np.broadcast_to(np.asarray(instances, np.int32), (len(faces),)))
        self._count += len(vertices)

    def boxes(self, lo: np.ndarray, hi: np.ndarray, side_classes, instances, bottom: bool = False) -> None:
        """Axis-aligned boxes with corners lo, hi (n, 3).

        side_classes: the class of each side (-x, +x, -y, +y, -z, +z), shape (6,) or (n, 6).
        instances: (n,) or scalar. bottom: keep the -z side (hidden when the box stands on the ground).
        """
        lo, hi = np.atleast_2d(lo), np.atleast_2d(hi)
        n = len(lo)
        vertices = lo[:, None] + (hi - lo)[:, None] * _BOX_CORNERS
        sides = [0, 1, 2, 3, 4, 5] if bottom else [0, 1, 2, 3, 5]
        rows = np.concatenate([[2 * s, 2 * s + 1] for s in sides])
        faces = (_BOX_FACES[rows][None] + 8 * np.arange(n)[:, None, None]).reshape(-1, 3)
        classes = np.broadcast_to(np.asarray(side_classes), (n, 6))[:, np.repeat(sides, 2)]
        inst = np.repeat(np.broadcast_to(np.asarray(instances), (n,)), len(rows))
        self.add(vertices.reshape(-1, 3), faces, classes.reshape(-1), inst)

    def prisms(self, centres: np.ndarray, z0, z1, radius, surface: int, instances, sides: int = 6) -> None:
        """Upright prisms (a cylinder's stand-in) on centres (n, 2) from heights z0 to z1, with a top cap."""
        centres = np.atleast_2d(centres)
        n = len(centres)
        z0, z1, radius = (np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in (z0, z1, radius))
        angle = 2 * np.pi * np.arange(sides) / sides
        ring = np.stack([np.cos(angle), np.sin(angle)], -1)
        xy = centres[:, None] + radius[:, None, None] * ring
        bottom = np.concatenate([xy, np.broadcast_to(z0[:, None, None], (n, sides, 1))], -1)
        top = np.concatenate([xy, np.broadcast_to(z1[:, None, None], (n, sides, 1))], -1)
        i = np.arange(sides)
        j = (i + 1) % sides
        walls = np.concatenate([np.stack([i, j, sides + j], -1), np.stack([i, sides + j, sides + i], -1)])
        cap = np.stack([np.full(sides - 2, sides), sides + i[1:-1], sides + i[2:]], -1)
        faces = np.concatenate([walls, cap])
        faces = (faces[None] + 2 * sides * np.arange(n)[:, None, None]).reshape(-1, 3)
        inst = np.repeat(np.broadcast_to(np.asarray(instances), (n,)), len(walls) + len(cap))
        self.add(np.concatenate([bottom, top], 1).reshape(-1, 3), faces, surface, inst)

    def blob(self, centre: np.ndarray, radii: np.ndarray, surface: int, instance: int, rng: np.random.Generator) -> None:
        """A lumpy ellipsoid (80 faces) with semi-axes radii (3,) around centre (3,), e.g. a tree crown."""
        bumps = rng.uniform(0.8, 1.2, len(_SPHERE.vertices))[:, None]
        self.add(centre + _SPHERE.vertices * radii * bumps, _SPHERE.faces, surface, instance)

    def build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vertices (V, 3) float32, faces (F, 3) int32, classes (F,) uint8, instances (F,) int32."""
        return (
            np.concatenate(self._vertices).astype(np.float32),
            np.concatenate(self._faces).astype(np.int32),
            np.concatenate(self._classes),
            np.concatenate(self._instances),
        )
