"""Every matplotlib figure (drawn on `matplotlib.figure.Figure`, never pyplot) and each analysis's bundle writer
(the files and report sections of one analysis).

Layer 8 of 10: may import every layer below.
"""
