"""Export: the per-frame network of one avatar as an FP32/FP16 TFLite model for a phone GPU.

  fold.py        model + avatar -> FoldedFrame (plain arrays) and the per-frame JAX function over it
  tflite.py      jax2tf trunk + TF warp -> TFLite FP32/FP16, verified against JAX, with a report
  gpu_compat.py  reads a .tflite flatbuffer and checks it against the GPU delegate's rules
"""
