"""One module per analysis step: its computation, its frozen section dataclass and `run_xxx(ctx)`. No figures,
writers or report code here (those live in core.figures).

Layer 4 of 10: may import core.infra, core.run and core.model.
"""
