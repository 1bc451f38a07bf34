"""A loaded model and everything that touches its modules: loading (safetensors only, never remote code), model
info and provenance, the one architecture map (blocks, attention and MLP parts, q/k projections, rotary, named hook
sites), forward hooks, tokenisation and the capture pass.

Layer 3 of 10: may import core.infra and core.run.
"""
