"""Runs over more than one text or run: corpus geometry with intervals, activation patching, comparison of two
analyses (CKA) — computation only.

Layer 6 of 10: may import every layer below (infra, run, model, steps, analysis).
"""
