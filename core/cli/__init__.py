"""The headless command line (`python -m core analyze|generate|patch|corpus|compare`).

Layer 10 of 10 (the top): may import every layer below.
"""
