"""The core version. Bump it whenever a formula or a stored field changes: it is part of every cache key,
so a changed formula never serves a result computed by the old one."""

CORE_VERSION = "0.2.1"  # 0.2.1: the neuron-factor layer range settings count blocks 1…L
