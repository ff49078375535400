"""Data pipelines: face images and videos -> the model's inputs (training records, tf.data batches, the
keypoints and stickman of a photo).

  faces/             landmarks (dlib, face-alignment), the authors' crop, segmentation masks, the stickman
  config.py          the job's settings (Config)
  media.py           find videos / frame folders / the authors' layout; decode clips
  extract.py         one video -> face crops, keypoints, masks (worker processes; faces/)
  records.py         the stored format: one tf.train.Example per frame in ArrayRecord shards
  job.py             the job both runners share: plan, shard files and reports, manifest, TFDS metadata
  preprocess.py      the `bilayer-jax preprocess` command and its default runner, a process pool
  beam_runner.py     the same job on Apache Beam (Dataflow, Flink, Spark, the local DirectRunner)
  fs.py              local and gs:// file access (etils epath), atomic writes
  tfds_builder.py    the output as a TFDS dataset
  input_pipeline.py  (source, target) samples per video, host-sharded, as numpy batches for training

Dependencies point one way: bilayer_jax (the model, training, export, the CLI) imports this package;
nothing here imports bilayer_jax.
"""
