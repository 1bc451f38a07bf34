"""The core version. Bump it whenever a formula or a stored field changes: it is part of every cache key,
so a changed formula never serves a result computed by the old one."""

CORE_VERSION = "0.2.3"
# 0.2.3: an SAE's overall FVU (and the x̄ of every FVU_t) leaves the text's special tokens out, as SAELens's evals do.
# 0.2.2: a token that is part of a UTF-8 character is written as its bytes ("<0xE6>"), not U+FFFD.
# 0.2.1: the neuron-factor layer range settings count blocks 1…L
