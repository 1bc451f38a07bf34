"""Pitfalls (P_*) and references (R_*) that entries of more than one kind module cite: written once, here."""

from __future__ import annotations

P_TOKEN_BOUND = (
    "The spectral metrics are computed over the tokens of ONE text: the centred T×D matrix has rank at "
    "most min(T−1, D), so effective rank, participation ratio and intrinsic dimensionality can never "
    "exceed T−1 (the token count minus one, after centring). A 12-token sentence cannot show more than "
    "11 dimensions, whatever the width of the model; compare layers of one run, or texts of equal length."
)
P_CENTRING = (
    "The states are centred over tokens (the mean token vector is subtracted) before the spectrum is taken. "
    "Without centring the shared mean direction - large in most transformers - would dominate the first "
    "singular value and make every layer look one-dimensional."
)
P_SPECIAL = (
    "Special tokens ([CLS], [SEP], BOS) and the first token of a causal model often carry huge-norm, "
    "outlier states (attention sinks). Including them can change the metrics a lot; the setting "
    "'exclude special tokens' removes those rows before the metrics are computed."
)
P_NOT_EXPLANATION = (
    "Attention is not explanation: attention weights say where a head reads from, not what "
    "information moved or whether it mattered for the output (Jain & Wallace 2019; Wiegreffe & "
    "Pinter 2019). Use the gradient attributions for importance claims."
)
P_LAST_PRE_NORM = (
    "The last layer is the residual stream BEFORE the model's final norm (GPT-2 ln_f, Llama norm), so "
    "all layers are on the same footing; it differs from the library's default last hidden state."
)
P_RANDOM_BASELINE = (
    "One text is one sample. Differences of a few per cent between layers or models are within the "
    "variation across texts; compare against a second text before reading much into them."
)
R_ROY = "Roy, O. & Vetterli, M. (2007). The effective rank: a measure of effective dimensionality."
R_PR = (
    "Gao, P. et al. (2017). A theory of multineuronal dimensionality, dynamics and measurement (participation ratio)."
)
R_ETHAYARAJH = (
    "Ethayarajh, K. (2019). How contextual are contextualized word representations? Comparing the "
    "geometry of BERT, ELMo, and GPT-2 embeddings."
)
R_CLARK = "Clark, K. et al. (2019). What does BERT look at? An analysis of BERT's attention."
R_VOITA = (
    "Voita, E. et al. (2019). Analyzing multi-head self-attention: specialized heads do the heavy lifting, "
    "the rest can be pruned."
)
R_MICHEL = "Michel, P. et al. (2019). Are sixteen heads really better than one?"
R_VIG = "Vig, J. & Belinkov, Y. (2019). Analyzing the structure of attention in a transformer language model."
R_JAIN = "Jain, S. & Wallace, B. C. (2019). Attention is not explanation."
R_WIEGREFFE = "Wiegreffe, S. & Pinter, Y. (2019). Attention is not not explanation."
R_ABNAR = "Abnar, S. & Zuidema, W. (2020). Quantifying attention flow in transformers."
R_SUNDARARAJAN = "Sundararajan, M. et al. (2017). Axiomatic attribution for deep networks."
R_NOSTALGEBRAIST = "nostalgebraist (2020). Interpreting GPT: the logit lens."
R_SPEARMAN = "Spearman, C. (1904). The proof and measurement of association between two things."
