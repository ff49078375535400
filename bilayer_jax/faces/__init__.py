"""Faces: what the model needs to know about a face image (keypoint conventions, the stickman)."""
