"""Export: the per-frame network of one avatar as an FP32/FP16 TFLite model for a phone GPU, in the order
the data flows:

  fold.py         model + avatar -> FoldedFrame (plain arrays) and the per-frame JAX function over it
  warp.py         the texture warp in TensorFlow (GATHER of texel patches, exact when a GPU computes in FP16)
  convert.py      jax2tf trunk + warp -> one tf.function -> TFLite FP32 and FP16 bytes
  gpu_compat.py   reads a .tflite flatbuffer and checks it against the GPU delegate's rules
  accuracy.py     the files in the interpreter against model.render (and an FP16-arithmetic emulation)
  interpreter.py  running .tflite files: one frame per call, latency (also animate's TFLite renderer)
  tflite.py       the export job: all of the above for one avatar or checkpoint, report.json

The two-file export (one pair of files for every avatar; `bilayer-jax export CHECKPOINT --out DIR`):
  avatar_graph.py the per-avatar graph: image, stickman, mask -> texture, avatar_params (embedder, projectors,
                  texture generator; no enhancer)
  resample_folds.py its conv + pooling and upsampling + conv folds (exact, on the kernels, in float64)
  frame_graph.py  the per-frame graph with the avatar as runtime inputs: keypoints, texture, avatar_params -> image
  two_file.py     the job (conversion, CPU and GPU-accelerator checks, report.json) and TwoFileAvatar, which
                  runs the pair in the interpreter (animate --backend tflite --tflite DIR)
"""
