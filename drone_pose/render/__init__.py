"""Differentiable silhouette rendering of drone meshes and the pixel grids it renders on (no ROS)."""
