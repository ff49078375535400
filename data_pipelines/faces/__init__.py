"""Faces: landmarks, the authors' crop, masks and the stickman of 68 keypoints (for preprocessing and
for the photos and driving videos that animate and export read)."""
