"""Checkpoints: a documented on-disk format, atomic saves, loads at any world size or ZeRO stage.

`saver` and `loader` move engine state to and from the layout in `layout`; `universal`
holds the resharding arithmetic; `consolidate` builds full fp32 weights offline. The
engine's `save_checkpoint` / `load_checkpoint` delegate to `engine_io`.
"""
