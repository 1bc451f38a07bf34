"""The run machinery shared by every kind of run (single-text analysis, corpus, patching, comparison): the settings
base (field metadata -> validation -> CLI options -> app widgets) with AnalysisSettings, the one result cache and its
key builder, the one progress signature.

Layer 2 of 10: may import core.infra.
"""
