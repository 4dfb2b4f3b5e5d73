"""Vectorised z-buffer rasterisation of triangle meshes with NumPy (no GPU, no per-triangle loop).

Every triangle is expanded into the pixel centres it covers, row by row (edge intersections give
each row's span), depth is interpolated perspective-correctly (1/z is linear in the image) from
barycentric coordinates, and the nearest triangle per pixel wins. Cost grows with the area the
mesh covers, not with the image size, which suits drones that span tens of pixels. Pixel centres
are at integer coordinates (pixel (row i, column j) covers x in [j - 0.5, j + 0.5)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR_PLANE_M = 1e-3
MAX_CANDIDATES = 4_000_000  # (triangle, pixel) pairs per chunk: bounds peak memory


@dataclass(frozen=True)
class Rasterization:
    """depth [H,W] float64 metres (inf where no triangle), face [H,W] int64 (-1 where none)."""

    depth: np.ndarray
    face: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """[H,W] bool: pixels covered by the mesh."""
        return self.face >= 0


def project_vertices(vertices_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [V,2] and depths [V] of camera-frame vertices [V,3] (metres) under intrinsics K [3,3]."""
    z = vertices_cam[:, 2]
    safe_z = np.where(np.abs(z) > 1e-12, z, 1e-12)
    uvw = vertices_cam @ K.T
    return uvw[:, :2] / safe_z[:, None], z


def rasterize(
    vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, width: int, height: int
) -> Rasterization:
    """Z-buffer of the triangles faces [F,3] over camera-frame vertices [V,3] (optical frame, metres).

    Triangles with a vertex closer than NEAR_PLANE_M (or behind the camera) are skipped.
    """
    depth = np.full(height * width, np.inf)
    face_buffer = np.full(height * width, -1, dtype=np.int64)
    uv, z = project_vertices(np.asarray(vertices_cam, dtype=np.float64), np.asarray(K, dtype=np.float64))
    tri_uv, tri_z = uv[faces], z[faces]  # [F,3,2], [F,3]
    x0, y0 = tri_uv[:, 0, 0], tri_uv[:, 0, 1]
    x1, y1 = tri_uv[:, 1, 0], tri_uv[:, 1, 1]
    x2, y2 = tri_uv[:, 2, 0], tri_uv[:, 2, 1]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    ymin = np.maximum(np.ceil(tri_uv[..., 1].min(1)), 0).astype(np.int64)
    ymax = np.minimum(np.floor(tri_uv[..., 1].max(1)), height - 1).astype(np.int64)
    usable = (tri_z.min(1) > NEAR_PLANE_M) & (np.abs(area) > 1e-12) & (ymax >= ymin)
    usable &= (
        np.isfinite(tri_uv).all((1, 2)) & (tri_uv[..., 0].max(1) >= 0) & (tri_uv[..., 0].min(1) <= width - 1)
    )
    faces_left = np.nonzero(usable)[0]

    # Rows of each triangle, then the span of pixel centres inside it on each row.
    row_counts = ymax[faces_left] - ymin[faces_left] + 1
    row_face = np.repeat(faces_left, row_counts)
    row_y = (
        ymin[row_face] + np.arange(len(row_face)) - np.repeat(np.cumsum(row_counts) - row_counts, row_counts)
    )
    left, right = _row_spans(tri_uv[row_face], row_y)
    span_start = np.maximum(np.ceil(left), 0).astype(np.int64)
    span_counts = np.maximum(np.minimum(np.floor(right), width - 1).astype(np.int64) - span_start + 1, 0)

    start = 0
    while start < len(span_counts):
        cumulative = np.cumsum(span_counts[start:])
        stop = start + max(1, int(np.searchsorted(cumulative, MAX_CANDIDATES, side="right")))
        counts = span_counts[start:stop]
        f = np.repeat(row_face[start:stop], counts)
        py = np.repeat(row_y[start:stop], counts)
        px = (
            np.repeat(span_start[start:stop], counts)
            + np.arange(len(f))
            - np.repeat(np.cumsum(counts) - counts, counts)
        )
        start = stop
        # Barycentric coordinates from edge functions, normalised by the signed area (either winding).
        w0 = ((x1[f] - px) * (y2[f] - py) - (x2[f] - px) * (y1[f] - py)) / area[f]
        w1 = ((x2[f] - px) * (y0[f] - py) - (x0[f] - px) * (y2[f] - py)) / area[f]
        w2 = 1.0 - w0 - w1
        inverse_depth = (
            np.clip(w0, 0, 1) / tri_z[f, 0]
            + np.clip(w1, 0, 1) / tri_z[f, 1]
            + np.clip(w2, 0, 1) / tri_z[f, 2]
        )
        pixel_depth = 1.0 / inverse_depth
        pixel = py * width + px
        np.minimum.at(depth, pixel, pixel_depth)
        nearest = pixel_depth <= depth[pixel]
        face_buffer[pixel[nearest]] = f[nearest]
    return Rasterization(depth.reshape(height, width), face_buffer.reshape(height, width))


def _row_spans(triangles: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x extent [P] (left, right) of triangles [P,3,2] on the horizontal lines y [P]."""
    a, b = triangles, np.roll(triangles, -1, axis=1)  # the three edges a -> b
    ya, yb = a[..., 1], b[..., 1]
    crosses = (np.minimum(ya, yb) <= y[:, None]) & (np.maximum(ya, yb) >= y[:, None]) & (ya != yb)
    fraction = (y[:, None] - ya) / np.where(ya != yb, yb - ya, 1.0)
    x = a[..., 0] + fraction * (b[..., 0] - a[..., 0])
    left = np.where(crosses, x, np.inf).min(1)
    right = np.where(crosses, x, -np.inf).max(1)
    return left, right
