"""Data pipelines: raw talking-head videos -> sharded training frames -> tf.data batches.

  config.py          the job's settings (Config)
  media.py           find videos / frame folders / the authors' layout; decode clips
  extract.py         one video -> face crops, keypoints, masks (worker processes; bilayer_jax.faces)
  records.py         the stored format: one tf.train.Example per frame in ArrayRecord shards
  preprocess.py      the `bilayer-jax preprocess` job: plan, workers, shards, manifest, TFDS metadata
  tfds_builder.py    the output as a TFDS dataset
  input_pipeline.py  (source, target) samples per video, host-sharded, as numpy batches for training

Nothing in bilayer_jax imports this package (only the CLI does).
"""
