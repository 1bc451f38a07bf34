"""Attention analyses (core/steps/attention.py): entropy, distance, head roles and the rest of result.attention.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import P_NOT_EXPLANATION, P_SPECIAL, R_CLARK, R_JAIN, R_VIG, R_VOITA, R_WIEGREFFE

R_KOVALEVA = "Kovaleva, O. et al. (2019). Revealing the dark secrets of BERT."
R_XIAO = "Xiao, G. et al. (2023). Efficient streaming language models with attention sinks."
R_ROUSSEEUW = "Rousseeuw, P. J. (1987). Silhouettes: a graphical aid to the interpretation of cluster analysis."
R_OLSSON = "Olsson, C. et al. (2022). In-context learning and induction heads."

_ATTENTION: list[DocEntry] = [
    _e(
        key="attention_entropy",
        title="Attention entropy",
        kind="attention",
        short="Attention entropy per head: mean over query rows of −Σ a ln a (nats); low = focused, high = diffuse.",
        formula_latex=(r"E^{l,h} = \frac{1}{T}\sum_{i=1}^{T}\Big(-\sum_{j} A^{l,h}_{ij}\ln A^{l,h}_{ij}\Big)"),
        formula_plain="E(l,h) = (1/T) Σ_i (−Σ_j A_ij ln A_ij)   (nats; A = attention of head h in layer l, rows = queries)",
        definition="How spread out a head's attention is, averaged over the query tokens.",
        high="The head spreads its attention over many tokens (averaging / bag-of-words heads).",
        low="The head attends to one or two tokens (positional heads, delimiter or sink heads).",
        encoder_vs_decoder=(
            "In a causal model row i can only see i+1 keys, so early rows have low entropy by "
            "construction; use the normalised entropy to compare across positions and models."
        ),
        pitfalls=[
            P_NOT_EXPLANATION,
            "Grows with the number of keys a row may see: compare heads of one text only.",
            P_SPECIAL,
        ],
        references=[R_CLARK, R_VOITA, R_VIG, R_JAIN, R_WIEGREFFE],
        sources=["attention.entropy"],
    ),
    _e(
        key="normalized_attention_entropy",
        title="Normalised attention entropy",
        kind="attention",
        short="Normalised attention entropy: each row's entropy divided by ln(keys it may see); 0 = one key, 1 = uniform.",
        formula_latex=(
            r"\tilde E^{l,h} = \frac{1}{|\mathcal{I}|}\sum_{i\in\mathcal{I}} "
            r"\frac{-\sum_{j} A^{l,h}_{ij}\ln A^{l,h}_{ij}}{\ln n_i},\qquad "
            r"n_i = \#\{j : \text{row } i \text{ may attend to } j\},\ \mathcal{I} = \{i : n_i > 1\}"
        ),
        formula_plain="Ẽ(l,h) = mean over rows i with n_i > 1 of (−Σ_j A_ij ln A_ij) / ln n_i,  n_i = keys row i may see",
        definition=(
            "The attention entropy of each query row divided by its maximum possible value, so that causal "
            "and bidirectional models and short and long texts are comparable. In a causal model row i sees "
            "n_i = i+1 keys; otherwise n_i is read from the structural zeros of the attention (masked keys "
            "get exactly zero weight). Rows that can see one key only (the first token "
            "of a causal model) are left out."
        ),
        high="Close to 1: near-uniform attention over everything the row can see.",
        low="Close to 0: the head picks a single key.",
        encoder_vs_decoder="Makes encoders (all keys visible) and decoders (causal mask) comparable on one scale.",
        pitfalls=[P_NOT_EXPLANATION, "For very short texts few rows remain after excluding one-key rows."],
        references=[R_CLARK, R_VOITA],
        sources=["attention.normalized_entropy", "attention.n_visible"],
    ),
    _e(
        key="mean_attention_distance",
        title="Mean attention distance",
        kind="attention",
        short="Mean attention distance: attention-weighted |i − j| averaged over query rows (in tokens).",
        formula_latex=r"\bar d^{l,h} = \frac{1}{T}\sum_{i=1}^{T}\sum_{j} A^{l,h}_{ij}\,\lvert i-j\rvert",
        formula_plain="d(l,h) = (1/T) Σ_i Σ_j A_ij |i − j|   (tokens)",
        definition="How far, in tokens, a head looks on average from each query position.",
        high="Long-range heads that gather context from far away (or attend to the first token from late positions).",
        low="Local heads: self, previous-token or next-token attention.",
        encoder_vs_decoder=(
            "In decoders a first-token sink head gets a large distance that grows with the text "
            "length, without being 'long-range' in any useful sense; check the head's role."
        ),
        pitfalls=["Depends on the text length; compare heads within one run.", P_NOT_EXPLANATION],
        references=[R_VIG, R_CLARK],
        sources=["attention.mean_distance"],
    ),
    _e(
        key="head_clustering",
        title="Head clustering",
        kind="attention",
        short="Heads grouped by k-means on 10 standardised attention features; k chosen by silhouette (2-6).",
        formula_latex=(
            r"\min_{C_1..C_k}\sum_{c}\sum_{x\in C_c}\lVert z(x)-\mu_c\rVert^2,\qquad "
            r"s = \frac{1}{n}\sum_x \frac{b(x)-a(x)}{\max(a(x),b(x))}"
        ),
        formula_plain="k-means on standardised head features z(x): min Σ_c Σ_{x∈C_c} ‖z(x) − μ_c‖²;  silhouette s = mean (b − a)/max(a, b)",
        definition=(
            "Each head (row layer·H + head) is described by 10 features (entropy, normalised "
            "entropy, mean and relative distance, mass on the first token, previous token, itself, next "
            "token and special tokens, mean maximum weight). The features are z-scored, and k-means "
            "(scikit-learn, fixed seed) groups similar heads; k maximises the mean silhouette over k = 2-6 "
            "unless a number of clusters is set (the line under the scatter says which). The 2-D projection (PCA of the "
            "standardised features) places each head on a scatter plot."
        ),
        high="A silhouette near 1: well separated groups of heads with distinct behaviour.",
        low="A silhouette near 0 or negative: the heads form a continuum; the clusters are arbitrary cuts.",
        encoder_vs_decoder=(
            "Decoders typically separate into sink, previous-token and broad heads; encoders into "
            "[CLS]/[SEP] heads, positional heads and broad heads (Clark et al. 2019)."
        ),
        pitfalls=[
            "k-means always returns k clusters, even when the data has none: read the silhouette.",
            "The projection is 2-D; distances in it only approximate feature distances.",
            P_NOT_EXPLANATION,
        ],
        references=[R_CLARK, R_KOVALEVA, R_ROUSSEEUW],
        sources=[
            "attention.features",
            "attention.feature_names",
            "attention.clusters",
            "attention.n_clusters",
            "attention.silhouette",
            "attention.projection",
            "attention.cluster_method",
        ],
    ),
    _e(
        key="head_roles",
        title="Head roles",
        kind="attention",
        short="Head role by attention mass: previous-token, first-token/sink, self, broad, or other.",
        formula_latex=(
            r"m_{\mathrm{prev}} = \tfrac{1}{T-1}\sum_{i\ge 1} A_{i,i-1},\quad "
            r"m_{\mathrm{self}} = \tfrac{1}{T-1}\sum_{i\ge 1} A_{ii},\qquad "
            r"m_{\mathrm{sink}} = \max\Big(\tfrac{1}{T-1}\sum_{i\ge 1} A_{i,0},\ "
            r"\tfrac{1}{T-1}\sum_{i\ge 1}\sum_{j\in S} A_{ij}\Big),\qquad "
            r"\mathrm{role} = \arg\max_{r:\, m_r \ge 0.5} m_r,\ \text{else broad if } \tilde E \ge 0.8,"
            r"\ \text{else other}"
        ),
        formula_plain=(
            "m_prev = mean over rows i ≥ 1 of A[i, i−1];  m_sink = max(mean A[i, 0], mean Σ_(j special) "
            "A[i, j]);  m_self = mean A[i, i];  role = the largest of those ≥ 0.5, else 'broad' if the "
            "normalised entropy ≥ 0.8, else 'other'"
        ),
        definition=(
            "A rule-based label for each head from its average attention mass (over query rows i ≥ 1) on "
            "the previous token, on the first token or the special tokens (attention sink), and on itself: "
            "the largest mass that passes its threshold (0.5) names the role; otherwise a head with "
            "normalised entropy ≥ 0.8 is 'broad', and anything else 'other'. The thresholds are recorded "
            "with the result."
        ),
        high="A clear role: most of the head's mass follows one simple pattern.",
        low="'other': no single simple pattern; the head may be content-based (e.g. induction or syntactic heads).",
        encoder_vs_decoder=(
            "Decoders have many first-token/sink heads (Xiao et al. 2023) and previous-token heads; "
            "encoders put the sink mass on [CLS] / [SEP] (Clark et al. 2019)."
        ),
        pitfalls=[
            "Thresholds are heuristic: a head just below a threshold is labelled differently.",
            P_NOT_EXPLANATION,
            P_SPECIAL,
        ],
        references=[R_CLARK, R_VOITA, R_XIAO, R_OLSSON],
        sources=["attention.roles", "attention.role_thresholds"],
    ),
]

ENTRIES: list[DocEntry] = [*_ATTENTION]
