"""Helpers shared by several built-in plugins, kept outside any one method's folder so that no
plugin depends on another's internals: latent.py (the paper's code sizes), geometry.py
(rotation matrices and affine resampling), volume_layers.py (exact, faster 3D layers)."""
