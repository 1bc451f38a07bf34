"""What a result looks like as tables, chart specs and words: DataFrames behind the charts, the chart-spec helpers,
the documentation registry (formulas, interpretations, captions).

Layer 7 of 10: may import every layer below; no matplotlib.
"""
