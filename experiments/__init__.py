"""Experiment configs, one module per experiment, each with `get_config(arg)` (ml_collections).

Shipped in the wheel: `bilayer-jax train --config NAME[:OPTIONS]` finds them by name from any folder
(bilayer_jax/config_files.py), a path to a user's own file works the same way.
"""
