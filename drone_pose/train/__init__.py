"""Training of keypoint networks through heatmap and PnP losses (the study's experiments)."""
