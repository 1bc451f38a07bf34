"""The single-text analysis: `analyze()` / `add_views()` (capture -> steps -> one AnalysisResult) and the result
itself.

Layer 5 of 10: may import core.infra, core.run, core.model and core.steps.
"""
