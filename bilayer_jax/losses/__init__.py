"""Training losses of the bi-layer model (docs/model.md §4): adversarial and feature matching, pixelwise, perceptual.

The perceptual feature networks (ImageNet VGG19, VGGFace VGG16) and their weight loaders are in `vgg`;
the test-time metrics that reuse them (LPIPS) live in `bilayer_jax.metrics`.
"""
