"""Plumbing every layer may use: errors, the pickle-free serialiser, file formats, paths, thread helpers,
devices, deployment guards (bounds for public servers), model presets, export options, the core version.

Layer 1 of 10 (the ground): may import nothing from core.
"""
