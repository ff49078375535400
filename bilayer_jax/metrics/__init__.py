"""Evaluation metrics of generated frames against real ones (docs/model.md §4, test time).

psnr, ssim: pixel fidelity (float images in [-1, 1] or uint8); lpips: LPIPS v0.1 VGG16; csim: ArcFace
IR-SE-50 identity similarity (user-supplied weights) with `dlib_embedding_cosine` as the offline fallback
under its own name; pose_error: landmark error in inter-ocular units with a pluggable landmark detector.
The main function of each submodule is re-exported under the submodule's name (metrics.psnr is the function).
"""
from bilayer_jax.images import to_uint8
from data_pipelines.faces.landmarks import DlibLandmarks, to_crop_coordinates
from bilayer_jax.metrics.dlib_identity import DLIB_METRIC_NAME, DlibFaceEmbedder, dlib_embedding_cosine
from bilayer_jax.metrics.arcface_csim import IRSEBackbone, align_faces, arcface_embeddings, csim, load_arcface_ir_se
from bilayer_jax.metrics.lpips import lpips
from bilayer_jax.metrics.lpips import load_params as load_lpips_params
from bilayer_jax.metrics.pose import normalized_landmark_error, pose_error
from bilayer_jax.metrics.psnr import psnr
from bilayer_jax.metrics.ssim import ssim

__all__ = [
    'DLIB_METRIC_NAME', 'DlibFaceEmbedder', 'DlibLandmarks', 'IRSEBackbone', 'align_faces', 'arcface_embeddings',
    'csim', 'dlib_embedding_cosine', 'load_arcface_ir_se', 'load_lpips_params', 'lpips',
    'normalized_landmark_error', 'pose_error', 'psnr', 'ssim', 'to_crop_coordinates', 'to_uint8',
]
