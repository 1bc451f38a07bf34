"""What leaves the process: the bundle, the ZIP, the one PDF writer and the reports, saved runs, the session log.

Layer 9 of 10: may import every layer below.
"""
