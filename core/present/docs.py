"""The documentation registry: one source of truth for every metric, analysis and figure.

The Details page renders it (formulas with st.latex), the other pages take their chart captions and tooltips from
`caption(key)`, and the PDF report takes each formula as plain text (`formula_text(key)`, since fpdf cannot render
LaTeX) and its interpretation paragraph (`interpretation(key)`). A formula is written here once.

Each entry names what it documents in `sources`, so a test can check both directions (every computed thing has an
entry, every entry names something computed):
  "metric:<name>"          a layer metric in core.steps.metrics.METRIC_NAMES
  "<section>.<field>"      a field of a result section (result.attention, .attribution, .predictions, .logit_lens)
  "core.<module>:<name>"   a public function of core (e.g. the generation API)
Figure entries name the bundle files they describe in `files` (fnmatch patterns such as "plots/layer_metrics.png").

Notation used throughout: L layers, H heads, T tokens, D hidden width; h_t^l the hidden state of token t after
block l (l = 0 is the embedding output); A^{l,h} the attention matrix of head h in layer l, rows = queries.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from core.present.docs_sae import SAE_ENTRIES

KINDS = (
    "layer_metric",
    "attention",
    "attribution",
    "prediction",
    "logit_lens",
    "figure",
    "animation",
    "causal",
    "neurons",
    "corpus",
    "comparison",
)


@dataclass(frozen=True)
class DocEntry:
    """Documentation of one metric, analysis or figure.

    formula_latex is "" for figures; formula_plain is its plain-text (Unicode) twin used in the PDF.
    pitfalls and references are tuples (immutable lists); a reference reads "Author et al. (year). Title.".
    how_to_read is set for figures and animations. short is the one-line caption for tooltips.
    """

    key: str
    title: str
    kind: str
    definition: str
    short: str
    formula_latex: str = ""
    formula_plain: str = ""
    high: str = ""
    low: str = ""
    encoder_vs_decoder: str = ""
    pitfalls: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    how_to_read: str = ""
    sources: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.key}: unknown kind {self.kind!r}")
        if self.kind not in ("figure", "animation") and not self.formula_latex:
            raise ValueError(f"{self.key}: a metric or analysis needs a formula")
        if self.formula_latex and not self.formula_plain:
            raise ValueError(f"{self.key}: a formula needs its plain-text version")


# --------------------------------------------------------------------------------------------------------------
# Shared pitfalls and references
# --------------------------------------------------------------------------------------------------------------
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
R_RECANATESI = "Recanatesi, S. et al. (2019). Dimensionality compression and expansion in deep neural networks."
R_ANSUINI = "Ansuini, A. et al. (2019). Intrinsic dimension of data representations in deep neural networks."
R_JOLLIFFE = "Jolliffe, I. T. (2002). Principal Component Analysis (2nd ed.)."
R_SHANNON = "Shannon, C. E. (1948). A mathematical theory of communication."
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
R_KOVALEVA = "Kovaleva, O. et al. (2019). Revealing the dark secrets of BERT."
R_VIG = "Vig, J. & Belinkov, Y. (2019). Analyzing the structure of attention in a transformer language model."
R_XIAO = "Xiao, G. et al. (2023). Efficient streaming language models with attention sinks."
R_JAIN = "Jain, S. & Wallace, B. C. (2019). Attention is not explanation."
R_WIEGREFFE = "Wiegreffe, S. & Pinter, Y. (2019). Attention is not not explanation."
R_ABNAR = "Abnar, S. & Zuidema, W. (2020). Quantifying attention flow in transformers."
R_SIMONYAN = (
    "Simonyan, K. et al. (2014). Deep inside convolutional networks: visualising image classification "
    "models and saliency maps."
)
R_SHRIKUMAR = (
    "Shrikumar, A. et al. (2016). Not just a black box: learning important features through propagating "
    "activation differences."
)
R_ANCONA = (
    "Ancona, M. et al. (2018). Towards better understanding of gradient-based attribution methods for deep "
    "neural networks."
)
R_SUNDARARAJAN = "Sundararajan, M. et al. (2017). Axiomatic attribution for deep networks."
R_ADEBAYO = "Adebayo, J. et al. (2018). Sanity checks for saliency maps."
R_DEVLIN = "Devlin, J. et al. (2019). BERT: pre-training of deep bidirectional transformers for language understanding."
R_RADFORD = "Radford, A. et al. (2019). Language models are unsupervised multitask learners."
R_HOLTZMAN = "Holtzman, A. et al. (2020). The curious case of neural text degeneration."
R_NOSTALGEBRAIST = "nostalgebraist (2020). Interpreting GPT: the logit lens."
R_BELROSE = "Belrose, N. et al. (2023). Eliciting latent predictions from transformers with the tuned lens."
R_ROUSSEEUW = "Rousseeuw, P. J. (1987). Silhouettes: a graphical aid to the interpretation of cluster analysis."
R_SPEARMAN = "Spearman, C. (1904). The proof and measurement of association between two things."
R_VASWANI = "Vaswani, A. et al. (2017). Attention is all you need."
R_ELHAGE = "Elhage, N. et al. (2021). A mathematical framework for transformer circuits."
R_OLSSON = "Olsson, C. et al. (2022). In-context learning and induction heads."


LATEX_LINE = 90  # a display formula longer than this is broken into lines at its top-level \qquad separators


def _split_lines(tex: str) -> str:
    r"""Break a long formula into a `gathered` block at its top-level (brace depth 0) \qquad separators, so that
    it fits the page; short formulas are returned unchanged."""
    if len(tex) <= LATEX_LINE:
        return tex
    parts, depth, start, i = [], 0, 0, 0
    while i < len(tex):
        ch = tex[i]
        if ch == "\\" and tex.startswith("\\qquad", i) and depth == 0:
            head = tex[start:i].rstrip()
            parts.append(head[:-1].rstrip() if head.endswith(",") else head)
            i += len("\\qquad")
            start = i
            continue
        if ch == "{" and (i == 0 or tex[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or tex[i - 1] != "\\"):
            depth -= 1
        i += 1
    parts.append(tex[start:].strip())
    parts = [p for p in parts if p]
    if len(parts) < 2:
        return tex
    return "\\begin{gathered}" + " \\\\ ".join(parts) + "\\end{gathered}"


def _e(**kw: Any) -> DocEntry:
    for k in ("pitfalls", "references", "sources", "files"):
        if k in kw:
            kw[k] = tuple(kw[k])
    if kw.get("formula_latex"):
        kw["formula_latex"] = _split_lines(kw["formula_latex"])
    return DocEntry(**kw)


# --------------------------------------------------------------------------------------------------------------
# Layer metrics (core/steps/metrics.py)
# --------------------------------------------------------------------------------------------------------------
_LAYER = [
    _e(
        key="effective_rank",
        title="Effective rank",
        kind="layer_metric",
        short="Effective rank: exp of the entropy of the normalised singular values of the token-centred states.",
        formula_latex=(
            r"\mathrm{erank}(H^{l}) = \exp\Big(-\sum_{k} p_k \ln p_k\Big),\qquad "
            r"p_k = \frac{\sigma_k}{\sum_j \sigma_j},\quad \sigma = \mathrm{svd}\big(H^{l} - \mathbf{1}\bar h^{l\top}\big)"
        ),
        formula_plain="erank(H) = exp(−Σ_k p_k ln p_k),  p_k = σ_k / Σ_j σ_j,  σ = singular values of H centred over tokens",
        definition=(
            "How many directions the token representations of a layer really spread over: the exponential of "
            "the Shannon entropy of the singular-value distribution of the T×D layer matrix, after "
            "subtracting the mean token vector. It lies between 1 and min(T−1, D)."
        ),
        high=("The tokens use many directions with similar strength: a rich, spread-out, isotropic representation."),
        low=(
            "A few directions dominate: tokens collapse onto a low-dimensional subspace (e.g. rank collapse in deep "
            "layers, or one outlier direction)."
        ),
        encoder_vs_decoder=(
            "Encoders (BERT) usually keep a fairly high effective rank through the middle layers and "
            "drop in the last ones; decoders (GPT-2) often show a sharp drop after the first blocks "
            "because a few outlier dimensions and the first-token sink dominate the residual stream."
        ),
        pitfalls=[P_TOKEN_BOUND, P_CENTRING, P_SPECIAL, P_LAST_PRE_NORM, P_RANDOM_BASELINE],
        references=[R_ROY, R_ETHAYARAJH],
        sources=["metric:effective_rank"],
    ),
    _e(
        key="participation_ratio",
        title="Participation ratio",
        kind="layer_metric",
        short="Participation ratio: (Σλ)²/Σλ² of the covariance eigenvalues; how many directions carry the variance.",
        formula_latex=(
            r"\mathrm{PR}(H^{l}) = \frac{\big(\sum_k \lambda_k\big)^2}{\sum_k \lambda_k^2},\qquad "
            r"\lambda_k \propto \sigma_k^2 \text{ (eigenvalues of the covariance of the centred } H^{l})"
        ),
        formula_plain="PR(H) = (Σ_k λ_k)² / Σ_k λ_k²,  λ_k ∝ σ_k² the covariance eigenvalues of H centred over tokens",
        definition=(
            "A variance-weighted count of dimensions: 1 when all variance lies on one axis, and equal to the "
            "number of axes when the variance is spread evenly over them. It is scale-free and weighs large "
            "eigenvalues more than the effective rank does (it uses σ², not σ)."
        ),
        high="Variance is spread over many principal directions.",
        low="Variance is concentrated in one or two principal directions (often a single outlier dimension).",
        encoder_vs_decoder=(
            "Decoders with massive activations (GPT-2 dims 138/378/447) often show a participation "
            "ratio close to 1-3 in the middle layers even when the effective rank is moderate; "
            "encoders usually stay higher."
        ),
        pitfalls=[
            P_TOKEN_BOUND,
            P_CENTRING,
            P_SPECIAL,
            "Very sensitive to a single large eigenvalue: compare it with the effective rank before concluding.",
        ],
        references=[R_PR, R_RECANATESI],
        sources=["metric:participation_ratio"],
    ),
    _e(
        key="intrinsic_dim_95",
        title="Intrinsic dimensionality (PCA, 95 %)",
        kind="layer_metric",
        short="Intrinsic dimensionality: the number of principal components that explain 95 % of the variance.",
        formula_latex=(
            r"d_{95}(H^{l}) = \min\Big\{k : \sum_{i=1}^{k} \lambda_i \ge 0.95 \sum_{j} \lambda_j\Big\},"
            r"\qquad \lambda_1 \ge \lambda_2 \ge \dots"
        ),
        formula_plain="d95(H) = min{k : λ_1 + … + λ_k ≥ 0.95 · Σ_j λ_j},  λ sorted descending (covariance eigenvalues of centred H)",
        definition=(
            "The smallest number of principal components of the token-centred layer matrix whose variance "
            "adds up to 95 % of the total. An integer between 1 and min(T−1, D)."
        ),
        high="Many components are needed to describe the token cloud: a high-dimensional representation.",
        low="A few components describe nearly all variation between the tokens.",
        encoder_vs_decoder=(
            "Follows the effective rank in shape; in decoders it can stay high while the participation "
            "ratio is near 1, because the 5 % tail spans many small directions."
        ),
        pitfalls=[
            P_TOKEN_BOUND,
            P_CENTRING,
            P_SPECIAL,
            "A linear (PCA) estimate: curved manifolds of low true dimension read as higher here.",
            "An integer count: it moves in steps, so small texts give a jagged curve.",
        ],
        references=[R_JOLLIFFE, R_ANSUINI],
        sources=["metric:intrinsic_dim_95"],
    ),
    _e(
        key="activation_entropy",
        title="Activation entropy",
        kind="layer_metric",
        short="Activation entropy: mean over tokens of the entropy of |h| normalised over the hidden units (nats).",
        formula_latex=(
            r"\mathcal{H}_{\mathrm{act}}(H^{l}) = \frac{1}{T}\sum_{t=1}^{T}\Big(-\sum_{j=1}^{D} p_{tj}\ln p_{tj}\Big),"
            r"\qquad p_{tj} = \frac{|h^{l}_{tj}|}{\sum_{i}|h^{l}_{ti}|}"
        ),
        formula_plain="H_act(H) = (1/T) Σ_t (−Σ_j p_tj ln p_tj),  p_tj = |h_tj| / Σ_i |h_ti|   (not centred; nats)",
        definition=(
            "How evenly each token's activation magnitude is spread over the hidden units, averaged over "
            "tokens. Computed on the raw (not centred) states, in nats; at most ln D."
        ),
        high="Activations are spread over many units (dense code).",
        low="A few units carry most of the magnitude (sparse code, or massive-activation outlier dimensions).",
        encoder_vs_decoder=(
            "Decoders often show a dip in the middle layers where a few outlier dimensions grow very "
            "large; encoders are usually flatter."
        ),
        pitfalls=[
            "Depends on the basis: it measures spread over the model's own hidden units, not over directions.",
            P_SPECIAL,
            "Its maximum ln D grows with the width, so compare models of equal width only.",
        ],
        references=[R_SHANNON],
        sources=["metric:activation_entropy"],
    ),
    _e(
        key="cosine_to_input",
        title="Cosine similarity to input",
        kind="layer_metric",
        short="Cosine to input: mean over tokens of cos(h_t at layer l, h_t at the embedding layer).",
        formula_latex=(
            r"\cos^{l} = \frac{1}{T}\sum_{t=1}^{T} \frac{\langle h^{l}_t, h^{0}_t\rangle}"
            r"{\lVert h^{l}_t\rVert\,\lVert h^{0}_t\rVert}"
        ),
        formula_plain="cos_l = (1/T) Σ_t ⟨h_t^l, h_t^0⟩ / (‖h_t^l‖ ‖h_t^0‖)   (h^0 = embedding output)",
        definition=(
            "How much each token's representation still points in the direction of its own input embedding, "
            "averaged over tokens. 1 at layer 0 by construction."
        ),
        high="The layer has changed the token little: the residual stream is still dominated by the embedding.",
        low="The layer has rewritten the token (contextualised it); near 0 means unrelated to the input direction.",
        encoder_vs_decoder=(
            "In residual decoders the value decays slowly and can rise again near the top (the "
            "unembedding is tied to the embedding in GPT-2); encoders move away faster in mid layers."
        ),
        pitfalls=[
            "Not centred: a large shared direction added by every layer lowers it for all tokens at once.",
            P_SPECIAL,
            P_LAST_PRE_NORM,
        ],
        references=[R_ETHAYARAJH],
        sources=["metric:cosine_to_input"],
    ),
]

# --------------------------------------------------------------------------------------------------------------
# Attention analyses (core/steps/attention.py: AttentionSection)
# --------------------------------------------------------------------------------------------------------------
_ATTENTION = [
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

# --------------------------------------------------------------------------------------------------------------
# Attribution (core/steps/attribution.py: AttributionSection)
# --------------------------------------------------------------------------------------------------------------
_ATTRIBUTION = [
    _e(
        key="attention_rollout",
        title="Attention rollout",
        kind="attribution",
        short="Attention rollout: head-averaged attention with the residual added, multiplied through the layers.",
        formula_latex=(
            r"\hat A^{l} = \mathrm{rownorm}\Big(\frac{1}{H}\sum_h A^{l,h} + I\Big) "
            r"= \tfrac12\,\bar A^{l} + \tfrac12 I,\qquad "
            r"R = \hat A^{L}\hat A^{L-1}\cdots \hat A^{1},\quad \mathrm{rollout}_j = R_{\tau j}"
        ),
        formula_plain="Â_l = rownorm(mean_h A_l,h + I) = ½ Ā_l + ½ I;  R = Â_L · Â_(L−1) · … · Â_1;  rollout_j = R[τ, j] (τ = target)",
        definition=(
            "Tracks how attention propagates through the residual stream: the identity models the skip "
            "connection, and the product over layers gives, for the target token, how much each input "
            "token flows into it. rollout is the target row of R."
        ),
        high="The input token is (by this approximation) a main source of the target's representation.",
        low="Little attention flow from the token to the target.",
        encoder_vs_decoder=(
            "In causal models the rollout mass piles up on the first token (the sink); in encoders on "
            "[CLS]/[SEP]. Both are artefacts more than importance."
        ),
        pitfalls=[
            P_NOT_EXPLANATION,
            "Ignores the MLPs and the value vectors' norms; it is a heuristic, not a gradient.",
            "Tends to become uniform or sink-dominated in deep models.",
        ],
        references=[R_ABNAR, R_JAIN, R_WIEGREFFE],
        sources=["attribution.rollout", "attribution.rollout_matrix"],
    ),
    _e(
        key="gradient_x_input",
        title="Gradient × input",
        kind="attribution",
        short="Gradient × input: Σ_d x_td · ∂f/∂x_td per token, f = log p of the predicted token at the target.",
        formula_latex=(
            r"a_t = \sum_{d=1}^{D} x_{t,d}\,\frac{\partial f(x)}{\partial x_{t,d}},\qquad "
            r"f(x) = \log p(y^{*}\mid x)_{\tau},\ y^{*} = \arg\max \text{ prediction at the target } \tau"
        ),
        formula_plain="a_t = Σ_d x_t,d · ∂f/∂x_t,d,  f(x) = log p(y* | x) at the target τ, y* the model's top prediction there  (x = token embeddings)",
        definition=(
            "A first-order estimate of each input token's contribution to the target prediction: the "
            "gradient of f = log-probability of the model's top prediction at the target position with "
            "respect to the input token embedding, multiplied by that embedding and summed over the hidden "
            "dimension (signed). Position embeddings are added inside the model and are not attributed."
        ),
        high="A large positive value: the token pushes the prediction up (to first order).",
        low="Negative: the token pushes the prediction down; near 0: little first-order effect.",
        encoder_vs_decoder=(
            "Causal models give exactly 0 to tokens after the target (they cannot be seen); masked "
            "models attribute in both directions."
        ),
        pitfalls=[
            "Only a local, linear view: saturated non-linearities give small gradients to important tokens.",
            "Gradients can be noisy; compare with integrated gradients.",
            P_SPECIAL,
        ],
        references=[R_SIMONYAN, R_SHRIKUMAR, R_ANCONA, R_ADEBAYO],
        sources=[
            "attribution.grad_x_input",
            "attribution.target_position",
            "attribution.target_token",
            "attribution.predicted_token",
            "attribution.predicted_id",
            "attribution.notes",
        ],
    ),
    _e(
        key="integrated_gradients",
        title="Integrated gradients",
        kind="attribution",
        short="Integrated gradients: (x − x′) times the gradient averaged along the path from a baseline x′ to x.",
        formula_latex=(
            r"\mathrm{IG}_t = \sum_{d}(x_{t,d}-x'_{t,d})\sum_{k=1}^{m} w_k\,"
            r"\frac{\partial f\big(x' + \alpha_k(x-x')\big)}{\partial x_{t,d}},\qquad "
            r"\alpha_k = u_k^{3},\ w_k = 3u_k^{2}\,\omega_k,\ x' = 0,\qquad "
            r"\Big|\sum_t \mathrm{IG}_t - \big(f(x) - f(x')\big)\Big| \le 0.01\,\big|f(x) - f(x')\big|"
        ),
        formula_plain=(
            "IG_t = Σ_d (x_t,d − x′_t,d) · Σ_k w_k ∂f(x′ + α_k (x − x′))/∂x_t,d,  (u_k, ω_k) the m-point "
            "Gauss–Legendre rule on [0, 1], α_k = u_k³, w_k = 3 u_k² ω_k,  x′ = 0;  m doubled until "
            "|Σ_t IG_t − (f(x) − f(x′))| ≤ 1 % of |f(x) − f(x′)| (or m = 512)"
        ),
        definition=(
            "Attributes the change of f (the log-probability of the predicted token at the target) between "
            "a baseline x′ (zero token embeddings) and the real input x to the input tokens, by integrating "
            "the gradient along the straight path. The integral uses m Gauss–Legendre nodes in u with the "
            "substitution α = u³, which puts more nodes near the baseline where the norm layers change "
            "fastest. It is adaptive: m starts at the steps setting and doubles until the completeness "
            "gap |Σ IG − (f(x) − f(x′))| is at most 1 % of |f(x) − f(x′)| or m reaches 512; the steps used, "
            "the gap (absolute and relative), whether it converged and every try are stored and shown next "
            "to the scores."
        ),
        high="The token contributes strongly to raising log p of the prediction relative to the baseline.",
        low="Negative: the token lowers it; near 0: no contribution along the path.",
        encoder_vs_decoder="As for gradient × input: tokens after the target get 0 in causal models.",
        pitfalls=[
            "The result depends on the baseline (here zero token embeddings; position embeddings stay).",
            "A gap still above 1 % at 512 steps (not converged) means the integrand is very steep near "
            "the baseline (RMSNorm of a near-zero input): read the scores as approximate.",
            "Conventions differ between tools, so numbers are not comparable as they stand: here the token "
            "embeddings only (position embeddings are not interpolated), the signed sum over the "
            "hidden dimension, the log-probability of the prediction, a zero baseline. captum's "
            "LayerIntegratedGradients on the embedding layer and inseq's defaults attribute the full "
            "embedding output (token + position), aggregate a token's vector by its L2 norm (unsigned), use "
            "the probability (inseq: of the generated token) and often an UNK/PAD-token baseline; captum's "
            "default rule is Gauss–Legendre in α with 50 steps. See the Methodology tab.",
            "Costs m forward and backward passes (about 30–40× a forward pass at m = 32 on a CPU), so it "
            "is off by default: turn on Integrated gradients in the sidebar's Settings (CLI --integrated-gradients).",
        ],
        references=[R_SUNDARARAJAN, R_ANCONA],
        sources=[
            "attribution.integrated_gradients",
            "attribution.ig_steps",
            "attribution.ig_completeness_gap",
            "attribution.ig_completeness_gap_relative",
            "attribution.ig_baseline",
            "attribution.ig_schedule",
            "attribution.ig_converged",
            "attribution.ig_history",
            "attribution.target_logprob",
            "attribution.baseline_logprob",
        ],
    ),
    _e(
        key="head_attribution",
        title="Head attribution",
        kind="attribution",
        short="Head importance: gradient × head output, Σ z·∂f/∂z over the head's dimensions (first-order ablation).",
        formula_latex=(
            r"S^{l,h} = \sum_{t}\sum_{d\in h} z^{l}_{t,d}\,\frac{\partial f}{\partial z^{l}_{t,d}}"
            r"\;\approx\; f(z) - f(z \text{ with head } h \text{ zeroed})"
        ),
        formula_plain="S(l,h) = Σ_t Σ_(d ∈ head h) z_t,d · ∂f/∂z_t,d  (z = input of layer l's attention output projection; ≈ f − f with head h zeroed)",
        definition=(
            "How much the target prediction depends on each head: z is the concatenated per-head attention "
            "output entering layer l's output projection; multiplying it by the gradient of f (log p of "
            "the predicted token at the target) and summing over the head's dimensions and all positions "
            "gives the first-order (Taylor) estimate of the change of f when the head is zeroed. The exact "
            "method is named under the head-attribution chart."
        ),
        high="A large positive score: the head supports the prediction (removing it would lower f, to first order).",
        low="Near 0: the prediction barely depends on the head; negative: the head works against the prediction.",
        encoder_vs_decoder="Both: a few heads usually carry most of the importance (Michel et al. 2019).",
        pitfalls=[
            "First-order: the real effect of pruning a head can differ, especially for large changes.",
            "Specific to this text and this target position.",
            "The heads are ranked by |score| in the report; the sign says support (+) or opposition (−).",
        ],
        references=[R_MICHEL, R_VOITA],
        sources=["attribution.head_scores", "attribution.head_method"],
    ),
]

# --------------------------------------------------------------------------------------------------------------
# Predictions (core/steps/predictions.py) and logit lens (core/steps/logit_lens.py)
# --------------------------------------------------------------------------------------------------------------
_PREDICTION = [
    _e(
        key="mask_fill",
        title="Mask filling",
        kind="prediction",
        short="Mask filling: top-k tokens by softmax probability at each mask position.",
        formula_latex=r"p(w \mid x_{\setminus i}) = \mathrm{softmax}(z_i)_w,\qquad z_i = \mathrm{head}_{\mathrm{MLM}}(h^{L}_i)",
        formula_plain="p(w | context) = softmax(z_i)_w at each mask position i;  the top-k words are listed",
        definition=(
            "For a masked language model, the probability distribution over the vocabulary at each [MASK] "
            "position, given the whole (bidirectional) context. The top-k candidates are listed."
        ),
        high="A confident fill: one candidate takes most of the probability.",
        low="Many plausible fills, or the context does not constrain the word.",
        encoder_vs_decoder=(
            "Only masked LMs (BERT family); encoders without an LM head show a calm 'unavailable' message instead."
        ),
        pitfalls=[
            "Word pieces: a candidate may be a fragment of a word.",
            "Probabilities are calibrated only roughly; compare the ranking rather than absolute values.",
        ],
        references=[R_DEVLIN],
        sources=[
            "predictions.kind",
            "predictions.message",
            "predictions.positions",
            "predictions.candidates",
            "predictions.top_k",
        ],
    ),
    _e(
        key="next_token",
        title="Next-token prediction",
        kind="prediction",
        short="Next-token prediction: top-k tokens by softmax probability at the last position.",
        formula_latex=r"p(w \mid x_{\le T}) = \mathrm{softmax}(z_T)_w,\qquad z_T = W_U\,\mathrm{norm}(h^{L}_T)",
        formula_plain="p(w | x_1..x_T) = softmax(z_T)_w,  z_T = W_U · norm(h_T^L)   (top-k listed)",
        definition=(
            "For a causal language model, the distribution of the next token after the text, from the "
            "logits at the last position."
        ),
        high="A confident continuation.",
        low="An open continuation: many tokens are plausible.",
        encoder_vs_decoder="Only causal LMs (GPT-2, Llama).",
        pitfalls=[
            "Token strings may start with a space marker (Ġ or ▁).",
            "Chat models expect their chat template; raw text may give odd predictions.",
        ],
        references=[R_RADFORD],
        sources=["predictions.kind", "predictions.candidates"],
    ),
    _e(
        key="generation",
        title="Text generation",
        kind="prediction",
        short="Generation: tokens sampled one at a time from the (temperature / top-p) next-token distribution.",
        formula_latex=(
            r"x_{T+1} \sim \mathrm{softmax}(z_T/\tau)\ \text{restricted to the top-}p\text{ nucleus},"
            r"\qquad \tau = \text{temperature}"
        ),
        formula_plain="x_(T+1) ~ softmax(z_T / τ) restricted to the top-p nucleus (greedy when sampling is off)",
        definition=(
            "Continues the text token by token with the causal model (streamed), using the generation "
            "settings: maximum new tokens, temperature, top-p, greedy or sampled, chat template when the "
            "model has one. Not part of the analysis result."
        ),
        high="High temperature: more varied, less likely text.",
        low="Low temperature / greedy: deterministic, often repetitive text.",
        encoder_vs_decoder="Causal LMs only.",
        pitfalls=[
            "Sampling is random: two runs differ unless seeded.",
            "Greedy decoding tends to repeat itself (Holtzman et al. 2020).",
        ],
        references=[R_HOLTZMAN, R_RADFORD],
        sources=["core.steps.predictions:generate_stream"],
    ),
]

_LENS = [
    _e(
        key="logit_lens",
        title="Logit lens",
        kind="logit_lens",
        short="Logit lens: each layer's residual state decoded with the final norm and the unembedding.",
        formula_latex=(
            r"p^{l}(w) = \mathrm{softmax}\big(W_U\,\mathrm{norm}(h^{l}_{t})\big)_w\ \text{(causal)},\ "
            r"\mathrm{softmax}\big(\mathrm{head}_{\mathrm{MLM}}(h^{l}_{t})\big)_w\ \text{(masked)},\qquad "
            r"\mathcal{H}^{l} = -\sum_w p^{l}(w)\ln p^{l}(w)"
        ),
        formula_plain=(
            "p_l(w) = softmax(W_U · norm(h_t^l))_w (causal LMs; masked LMs: the MLM head) for every layer l;  "
            "entropy_l = −Σ_w p_l(w) ln p_l(w)"
        ),
        definition=(
            "Reads the model's 'current guess' at each layer by applying the final norm and the output "
            "embedding to the intermediate residual stream. Because the captured last state is taken before "
            "the final norm, the last lens layer equals the model's own prediction. The probability of the "
            "final prediction is followed through the layers; the grid shows the top token for every layer "
            "and decoded position (all positions, unless a long text bounds them to a window). The result "
            "names the head that was applied and checks that the last layer reproduces the model's logits; "
            "ln of the vocabulary size is the entropy of a uniform guess."
        ),
        high="P(final prediction) high early: the prediction is formed in early layers.",
        low="P(final prediction) low until the last layers: the prediction appears late.",
        encoder_vs_decoder=(
            "Works well on decoders (GPT-2); on masked LMs the middle layers decode poorly because the "
            "LM head expects last-layer features. Not available without an LM head."
        ),
        pitfalls=[
            "Early layers are not trained to be decoded this way: noise there is expected (the tuned lens "
            "corrects for it; Belrose et al. 2023).",
            P_LAST_PRE_NORM,
            "On a CPU the grid of a long text is decoded only in a window of positions around the lens position "
            "(each decoded cell costs one product with the whole vocabulary: the full grid is ~4× a forward pass "
            "for GPT-2 at 128 tokens; the window costs about 5 % of one, at least 4 positions); the Full "
            "logit-lens grid setting decodes all of them. The last layer's row is read from the model's own "
            "logits, which equal its decoding.",
        ],
        references=[R_NOSTALGEBRAIST, R_BELROSE],
        sources=[
            "logit_lens.position",
            "logit_lens.layers",
            "logit_lens.top_tokens",
            "logit_lens.top_ids",
            "logit_lens.top_probs",
            "logit_lens.final_token",
            "logit_lens.final_token_id",
            "logit_lens.final_prob",
            "logit_lens.entropy",
            "logit_lens.grid_tokens",
            "logit_lens.grid_probs",
            "logit_lens.grid_ids",
            "logit_lens.grid_positions",
            "logit_lens.method",
            "logit_lens.last_layer_max_abs_diff",
            "logit_lens.vocab_size",
        ],
    ),
]

# --------------------------------------------------------------------------------------------------------------
# Figures and animations (how to read them). `files` are the bundle members (fnmatch patterns).
# --------------------------------------------------------------------------------------------------------------
_FIGURES = [
    _e(
        key="fig_layer_metrics",
        title="Layer metrics vs layer",
        kind="figure",
        short="The five layer metrics against the layer (0 = embeddings, last = before the final norm).",
        definition="One panel per layer metric, plotted against the layer index.",
        how_to_read=(
            "Read the shape, not the absolute values: a drop in effective rank or participation ratio "
            "marks a layer where the token cloud collapses onto few directions; a falling cosine to input "
            "marks where tokens are rewritten. The dashed line on the spectral panels is the token bound "
            "T−1 that they cannot exceed. The y-axes start at zero (the cosine axis spans 0 to 1), so a "
            'change looks as large as it is; the app\'s "Zoom to data" switch spans the data only.'
        ),
        pitfalls=[P_TOKEN_BOUND],
        files=["plots/layer_metrics.png"],
    ),
    _e(
        key="fig_metric_correlation",
        title="Metric correlation across layers",
        kind="figure",
        short="Correlation between the layer metrics across layers (Pearson: linear; Spearman: rank).",
        definition=(
            "The correlation of every pair of metrics computed over the L+1 layer values: Pearson r "
            "(linear) or Spearman ρ (Pearson on ranks, robust to monotone rescaling)."
        ),
        how_to_read=(
            "+1: two metrics rise and fall together through the layers; −1: one rises as the other falls; "
            "0: unrelated. With few layers (a 2-layer model has 3 points) correlations are very noisy. "
            "A blank cell means a metric has no correlation: it is constant over the layers, or it has "
            "missing values (the spectral metrics need at least 2 tokens)."
        ),
        pitfalls=["Computed over only L+1 points: not significance-tested.", P_RANDOM_BASELINE],
        references=[R_SPEARMAN],
        files=["plots/metric_correlation_pearson.png", "plots/metric_correlation_spearman.png"],
    ),
    _e(
        key="fig_metrics_normalized",
        title="Normalised metrics heatmap",
        kind="figure",
        short="Each metric min-max scaled to [0, 1] over the layers, so all five share one colour scale.",
        definition="A heatmap with metrics as rows and layers as columns; each row is scaled to [0, 1] on its own.",
        how_to_read=(
            "Compare where in depth each metric peaks or dips; the colours are not comparable between "
            "rows in absolute terms (each row has its own min and max)."
        ),
        files=["plots/metrics_normalized.png"],
    ),
    _e(
        key="fig_attention_heatmap",
        title="Attention heatmaps",
        kind="figure",
        short="Attention weights: rows are query tokens, columns the key tokens they read from; each row sums to 1.",
        definition=(
            "The matrix A^{l,h} of one head of layer l = 1 … L (Layer Analysis page, with its statistics "
            "and top attended pairs), or the mean over the heads of the last layer "
            "(plots/attention_mean_last_layer.png). Long texts show a window of tokens; every token is "
            "labelled when the labels fit, otherwise a cell's tooltip names its tokens."
        ),
        how_to_read=(
            "Each row sums to 1. A bright sub-diagonal is a previous-token head; a bright first column is "
            "a sink head; a bright diagonal a self head; an even spread a broad head. In causal models the "
            "upper triangle is empty (future tokens are masked). A head average blurs distinct heads "
            "together: look at single heads before concluding."
        ),
        pitfalls=[P_NOT_EXPLANATION],
        references=[R_CLARK, R_VIG, R_JAIN, R_WIEGREFFE],
        files=["plots/attention_mean_last_layer.png"],
    ),
    _e(
        key="fig_attention_entropy",
        title="Attention entropy maps",
        kind="figure",
        short="Attention entropy per head as a layer × head grid (nats, or normalised to 0…1).",
        definition="Heatmaps of the attention entropy and of the normalised entropy, layers as rows and heads as columns.",
        how_to_read=(
            "Dark (low entropy) cells are focused heads, bright cells diffuse ones. Use the normalised map "
            "to compare across models and text lengths; look for layers where the pattern changes."
        ),
        pitfalls=[P_NOT_EXPLANATION],
        files=["plots/attention_entropy.png", "plots/attention_entropy_normalized.png"],
    ),
    _e(
        key="fig_head_clusters",
        title="Head clusters",
        kind="figure",
        short="Heads projected to 2-D (PCA of their features), coloured by cluster, marker by role, labelled LlHh.",
        definition="A scatter of the 2-D projection of the head features, one point per head, coloured by cluster.",
        how_to_read=(
            "Nearby points are heads with similar attention statistics. Tight, separate groups with a high "
            "silhouette are real head types; overlapping colours mean a continuum. The marker gives the "
            "rule-based role, which need not agree with the cluster."
        ),
        files=["plots/head_clusters.png"],
    ),
    _e(
        key="fig_attribution",
        title="Token attributions",
        kind="figure",
        short="The text with each token shaded by its score, one block per method (rollout, gradient × input, IG).",
        definition=(
            "Each method is scaled by its largest |score|; signed methods use red (positive) / blue "
            "(negative), rollout (never negative) a single green scale; the target token is outlined. The "
            "Layer Analysis page shows the same scores as bars."
        ),
        how_to_read=(
            "Compare methods: tokens that all methods rank high are the most trustworthy explanations; "
            "tokens high in rollout only are usually attention sinks. For the gradient methods red pushes "
            "the prediction up, blue down. Colours are relative within a block, not across blocks."
        ),
        pitfalls=[P_NOT_EXPLANATION],
        references=[R_ABNAR, R_SUNDARARAJAN],
        files=["plots/token_attribution.png"],
    ),
    _e(
        key="fig_head_attribution",
        title="Head attribution map",
        kind="figure",
        short="Per-head importance for the target prediction (layer × head, diverging colours centred at 0).",
        definition="A layer × head heatmap of the head attribution scores (gradient × head output).",
        how_to_read=(
            "Red heads support the prediction, blue heads work against it; usually only a handful stand "
            "out. Pale cells matter little for this text and target."
        ),
        references=[R_MICHEL],
        files=["plots/head_attribution.png"],
    ),
    _e(
        key="fig_predictions",
        title="Prediction bars",
        kind="figure",
        short="Top-k candidate tokens and their probabilities at the predicted position(s).",
        definition="Horizontal bars of the top-k candidates' probabilities, one panel per predicted position.",
        how_to_read="The longer the first bar relative to the others, the more confident the model.",
        files=["plots/predictions.png"],
    ),
    _e(
        key="fig_logit_lens",
        title="Logit-lens plots",
        kind="figure",
        short="Top token per layer and position decoded through the model's own head, and p(final token) by layer.",
        definition=(
            "A grid of the top decoded token at every layer (rows) and position (columns), coloured by its "
            "probability, and a line of the final prediction's probability (and entropy) through the layers."
        ),
        how_to_read=(
            "Read the target column from bottom to top to see when the final prediction emerges; "
            "rows where the token stops changing mark where the prediction is settled."
        ),
        references=[R_NOSTALGEBRAIST],
        files=["plots/logit_lens.png", "plots/logit_lens_layers.png"],
    ),
    _e(
        key="anim_layer_transitions",
        title="Layer-transition animations",
        kind="animation",
        short=(
            "GIFs stepping through the layers: the attention of one head or the mean over heads (layers 1 … L), "
            "and the tokens in one common 2-D basis (layers 0 … L)."
        ),
        definition=(
            "attention_layers.gif: one frame per layer 1 … L of the attention averaged over heads (the app "
            "can show a single head instead), all frames on one colour scale. token_trajectories.gif: every "
            "token's hidden state projected on ONE 2-D PCA basis fitted on all layers together, one frame "
            "per layer 0 (embeddings) … L, fixed axes, earlier layers faint. Frame titles number layers as "
            "the pages and CSV files do."
        ),
        how_to_read=(
            "Watch for the layer where the picture changes abruptly: attention concentrating on the first "
            "token, or tokens drifting together (collapse) or apart. Because the basis and the axes are "
            "shared by all frames, movement between frames is real movement in that plane."
        ),
        pitfalls=[
            "Two PCA components show only part of the variance (the ratio is in the frame); points that "
            "overlap in 2-D may be far apart in the full space."
        ],
        files=["animations/attention_layers.gif", "animations/token_trajectories.gif"],
    ),
]

# --------------------------------------------------------------------------------------------------------------
# Neuron factors (core/steps/neurons.py) and the query–key view (core/steps/qk.py)
# --------------------------------------------------------------------------------------------------------------
R_ALAMMAR = "Alammar, J. (2021). Ecco: an open source library for the explainability of transformer language models."
R_LEE_SEUNG = "Lee, D. D. & Seung, H. S. (1999). Learning the parts of objects by non-negative matrix factorization."
R_OLAH_BUILDING = "Olah, C. et al. (2018). The building blocks of interpretability."
R_VIG_TOOL = "Vig, J. (2019). A multiscale visualization of attention in the transformer model."
R_SU = "Su, J. et al. (2021). RoFormer: enhanced transformer with rotary position embedding."
R_AINSLIE = (
    "Ainslie, J. et al. (2023). GQA: training generalized multi-query transformer models from multi-head checkpoints."
)

_NEURONS = [
    _e(
        key="neuron_factors",
        title="Neuron factors (NMF of MLP activations)",
        kind="neurons",
        short="NMF of the MLP neuron activations over the tokens: which tokens fire which groups of neurons together.",
        formula_latex=(
            r"A_{t,(l,n)} = \max(a^{l}_{t,n}, 0) \qquad A \approx W H,\; "
            r"W \in \mathbb{R}_{\ge 0}^{T\times k},\;"
            r" H \in \mathbb{R}_{\ge 0}^{k\times N} \qquad \min_{W,H \ge 0} \lVert A - WH \rVert_F"
        ),
        formula_plain=(
            "A[t, (l, n)] = max(a_l[t, n], 0);  A ≈ W H with W ≥ 0 (T × k), H ≥ 0 (k × N);  minimise ‖A − WH‖_F"
        ),
        definition=(
            "a_l[t] is the vector the MLP of block l feeds its output projection at token t: act(W_in x) for "
            "GPT-2 (gelu_new), BERT/MiniLM (gelu), act(gate x) ⊙ (up x) for Llama-style gated MLPs. The "
            "activations of the chosen layers are laid side by side (N = layers × neurons), negative values "
            "clipped to 0, and factorised by scikit-learn's NMF into k factors (default 6, seeded). Column f "
            "of W shades the tokens (how strongly each token expresses factor f); row f of H ranks the neurons "
            "that make up the factor. The relative error ‖A − WH‖/‖A‖ and the clipped share of the activation "
            "mass are reported with the factors."
        ),
        high=(
            "A token dark in factor f strongly activates the neurons of f; factors that light up tokens of one kind "
            "(determiners, punctuation, a topic, the first token) are groups of neurons that fire together."
        ),
        low=(
            "A token pale in every factor is poorly explained by k factors (raise k) or activates mostly neurons the "
            "clipping removed."
        ),
        encoder_vs_decoder=(
            "Encoders see both sides, so a factor can mark a token by its right context too; in a "
            "causal model a factor at token t can only depend on tokens ≤ t. The first token of a "
            "causal model and [CLS]/[SEP] often form a factor of their own (huge-norm positions)."
        ),
        pitfalls=[
            "NMF is not unique: another seed or k can split or merge factors; compare factors within one run.",
            "Negative activations are clipped (as Ecco does). For GELU most neurons sit slightly below zero, so "
            "the clipped share of the mass is large even though each clipped value is small; for gated MLPs "
            "(SwiGLU) negative values are as informative as positive ones and are lost.",
            "A factor is a pattern over the tokens of ONE text, not a property of the model; top neurons are "
            "candidates to study, not proven features.",
            "W and H trade scale (WH = (Wc)(H/c)): read shading within a factor, not across factors.",
        ],
        references=[R_ALAMMAR, R_LEE_SEUNG, R_OLAH_BUILDING],
        sources=[
            "neuron_factors.layers",
            "neuron_factors.d_ff",
            "neuron_factors.n_factors",
            "neuron_factors.seed",
            "neuron_factors.token_factors",
            "neuron_factors.top_layer",
            "neuron_factors.top_neuron",
            "neuron_factors.top_weight",
            "neuron_factors.error",
            "neuron_factors.relative_error",
            "neuron_factors.clipped_fraction",
            "neuron_factors.n_iter",
        ],
    ),
    _e(
        key="query_key",
        title="Query–key view",
        kind="attention",
        short="For one head and query token: q, every key k_j, q ⊙ k_j, the scores and the softmax weights.",
        formula_latex=(
            r"s_j = c\,\langle q_i, k_j\rangle + m_{ij} = c \sum_d (q_i \odot k_j)_d + m_{ij} \qquad "
            r"w_j = \frac{e^{s_j}}{\sum_{j'} e^{s_{j'}}} \qquad c = 1/\sqrt{d_{head}}"
        ),
        formula_plain=(
            "s_j = c · Σ_d (q_i ⊙ k_j)_d + m_ij;  w_j = exp(s_j) / Σ_j' exp(s_j');  c = 1/√d_head, "
            "m_ij = −∞ for masked keys"
        ),
        definition=(
            "q_i and k_j are the head's query and key vectors (the q/k projections of the block's attention "
            "input; rotary models after the rotation, exactly as the model applies it). Grouped-query models "
            "(Llama, Mistral, Qwen2) share one key head among H/H_kv query heads. The elementwise product "
            "q ⊙ k_j shows which dimensions add up to the score; the softmaxed scores are the attention "
            "weights of that row (tested equal to the captured weights). GPT-2 configured with "
            "scale_attn_by_inverse_layer_idx divides c by l + 1."
        ),
        high=(
            "A large score comes from dimensions where q and k_j agree in sign and are both large: a few dark cells "
            "in q ⊙ k_j often carry the whole weight."
        ),
        low=(
            "A low score (or −∞) means disagreeing dimensions, or a masked key: later tokens in a causal model, "
            "padding, or positions outside a sliding window."
        ),
        encoder_vs_decoder=(
            "Causal models mask every key after the query (weight 0, score −∞); encoders score all "
            "keys. Rotary models' q and k depend on position, so the same token at another position "
            "has another key."
        ),
        pitfalls=[
            "Scores are shift-invariant under the softmax: adding a constant to every s_j changes no weight, so "
            "compare scores within one row only.",
            "q and k are recomputed from the captured block inputs with the model's own norm and projections "
            "(no second forward pass), and the view is computed in float64: it matches a float32 model to "
            "1e-5, a bfloat16/float16 model (or float16 storage of long texts) to about 1e-3.",
            P_NOT_EXPLANATION,
        ],
        references=[R_VIG_TOOL, R_VASWANI, R_SU, R_AINSLIE],
        sources=[
            "query_key.queries",
            "query_key.keys",
            "query_key.scaling",
            "query_key.key_mask",
            "query_key.causal",
            "query_key.window",
            "query_key.rotary",
        ],
    ),
    _e(
        key="fig_neuron_factors",
        title="Neuron-factor shading",
        kind="figure",
        short="The text once per factor, each token shaded by the factor's strength; top neurons listed per factor.",
        definition=(
            "One block per NMF factor: the tokens shaded by W[t, f] / max_t W[t, f], the target token "
            "outlined, and the factor's heaviest neurons as L<layer>·N<neuron>; neuron_factor_neurons.png "
            "shows the ten heaviest neurons of every factor with their weights in H."
        ),
        how_to_read=(
            "Look for factors that light up one kind of token (function words, punctuation, a topic, "
            "positions); then look up their top neurons. Compare shades within a factor, not across."
        ),
        files=["plots/neuron_factors.png", "plots/neuron_factor_neurons.png"],
    ),
    _e(
        key="fig_query_key",
        title="Query–key view",
        kind="figure",
        short="q, the keys and q ⊙ k as heatmaps (rows = keys), with the scores and softmax weights as bars.",
        definition=(
            "For one layer, head and query: the query vector on top, each key vector and its elementwise "
            "product with the query (rows = key tokens, columns = dimensions, red positive, blue negative), "
            "and per key the score c·q·k and the attention weight. Texts longer than 40 tokens show the 40 "
            "keys with the largest weights. The bundle draws the target token's query in the last layer, "
            "head 0."
        ),
        how_to_read=(
            "Find the key with the largest weight, then the dark cells in its q ⊙ k row: those dimensions "
            "make the score. Red cells add to the score, blue cells subtract."
        ),
        files=["plots/query_key.png"],
    ),
]

#: The registry, in display order.
# --------------------------------------------------------------------------------------------------------------
# Views of the peer tools (issue 16): direct logit attribution, promoted tokens, information-flow routes
# --------------------------------------------------------------------------------------------------------------
R_FERRANDO = (
    "Ferrando, J. & Voita, E. (2024). Information flow routes: automatically interpreting language models at scale."
)
R_LLMTT = "Tufanov, I. et al. (2024). LM Transparency Tool: interactive tool for analyzing transformer language models."
R_GEVA = (
    "Geva, M. et al. (2022). Transformer feed-forward layers build predictions by promoting concepts in the "
    "vocabulary space."
)
P_FROZEN = (
    "The norms' statistics are frozen at this run (LayerNorm's mean and σ, RMSNorm's rms): a part's value is "
    "its direct effect given the normalisation the whole residual received. Removing the part would change "
    "that normalisation and everything downstream, so DLA is not the effect of ablating it (see patching and "
    "ablation for that)."
)
P_POST_LN = (
    "Post-LN models (BERT, RoBERTa, DistilBERT, MiniLM) renormalise the residual stream after every sublayer: "
    "each part passes every later LayerNorm (frozen), and the masked-LM head's GELU is read as u·g(u) with "
    "the gate g(u) = GELU(u)/u frozen at the actual pre-activation (exact because GELU(u) = u·Φ(u)). The "
    "parts still sum to the logit exactly, but they depend on the frozen statistics and the frozen gate "
    "more than in a pre-LN model (GPT-2, Llama), where only the final norm is frozen."
)

_PEERS = [
    _e(
        key="direct_logit_attribution",
        title="Direct logit attribution",
        kind="attribution",
        short=(
            "Direct logit attribution: the token's logit split into embedding, heads, MLPs and biases, read through "
            "the frozen final norm and the unembedding."
        ),
        formula_latex=(
            r"z_y = \sum_{c} W_U[y]\cdot\big(s \odot P(c)\big) + \beta\cdot W_U[y] + b_U[y],\qquad "
            r"c \in \{\,e_t,\ z^{l,h}_t W_O^{l,h},\ b_O^{l},\ m^{l}_t\,\},\qquad s = \gamma/\sigma_t"
        ),
        formula_plain=(
            "z_y = Σ_c W_U[y] · (s ⊙ P(c)) + β·W_U[y] + b_U[y]; parts c = the embedding output e_t, each head's "
            "output z_t^{l,h} W_O^{l,h} (its slice of the output projection's input), the output biases "
            "b_O^l, the MLP outputs m_t^l; s = γ/σ_t the final norm's scale frozen at the final state "
            "(LayerNorm also centres: P(c) = c − mean(c); RMSNorm: P = identity, s = γ/rms_t)"
        ),
        definition=(
            "Because every map after the residual stream is linear once the norms' statistics are frozen, "
            "the logit of the attributed token (the model's top prediction at the target position) is exactly "
            "the sum of one number per part of the residual stream: the embedding output (token + position "
            "embeddings), every head's output, every attention output bias, every MLP output (its own bias "
            "included) and each norm's shift β, plus the unembedding bias. Layer 0 is the embedding, 1…L the "
            "blocks, L+1 the head (final norm shift, masked-LM head biases, unembedding bias). The page shows "
            "layers × heads with an MLP column; the result records how far the sum is from the model's own logit. "
            "Gemma-2's final soft-cap c·tanh(z/c) multiplies every part by the same frozen ratio cap(z)/z."
        ),
        high="A large positive part writes directly in the direction of the token's unembedding: it promotes it.",
        low="A large negative part suppresses the token directly (e.g. anti-induction or copy-suppression heads).",
        encoder_vs_decoder=(
            "Exact on both. On pre-LN decoders only the final norm is frozen; on post-LN encoders every "
            "later LayerNorm and the masked-LM head's GELU gate are frozen too (see the pitfalls). Not "
            "available for an encoder without a language-model head."
        ),
        pitfalls=[
            P_FROZEN,
            P_POST_LN,
            "Direct effects only: a head whose output is read by later heads or MLPs (indirect effect) can matter "
            "a lot and still have a small DLA.",
            "The MLP column is the whole MLP (its output bias included); per-neuron attribution is not shown.",
        ],
        references=[R_ELHAGE, R_NOSTALGEBRAIST],
        sources=[
            "dla.position",
            "dla.token_id",
            "dla.token",
            "dla.logit",
            "dla.n_layers",
            "dla.n_heads",
            "dla.layers",
            "dla.components",
            "dla.heads",
            "dla.values",
            "dla.sum_abs_error",
            "dla.residual",
            "dla.method",
            "dla.notes",
        ],
    ),
    _e(
        key="promoted_tokens",
        title="Promoted and suppressed tokens",
        kind="attribution",
        short=(
            "Promoted / suppressed tokens: the vocabulary entries a block's or head's update raises and lowers most, "
            "read through the frozen final norm and the unembedding."
        ),
        formula_latex=r"\Delta z = W_U\,\big(s_t \odot P(u)\big),\qquad \text{top-}k\ \Delta z\ \text{and}\ \text{top-}k\ (-\Delta z)",
        formula_plain=(
            "Δz = W_U (s_t ⊙ P(u)) for an update u (a block's attention or MLP update, or one head's output) "
            "at position t, s_t the final norm's scale frozen at that position; the k largest and the k "
            "smallest Δz"
        ),
        definition=(
            "Reads an update in vocabulary space, as the LLM Transparency Tool does for blocks and heads: "
            "which tokens it pushes up and which it pushes down, directly. Block updates are stored for the "
            "positions of the text (all positions, or on a CPU a window around the target bounded by a "
            "compute budget: each row costs one product with the whole vocabulary), each head at the "
            "target position; choosing among them on the page runs nothing."
        ),
        high="Tokens at the top of the promoted list are what the update argues for.",
        low="Tokens at the top of the suppressed list are what it argues against.",
        encoder_vs_decoder="Post-LN models read the update through every later (frozen) LayerNorm and the MLM head.",
        pitfalls=[
            P_FROZEN,
            "Logit differences, not probabilities: a promoted token can stay improbable.",
            "Read before Gemma-2's soft-cap (the cap only rescales).",
        ],
        references=[R_GEVA, R_LLMTT],
        sources=[
            "dla.promote_positions",
            "dla.promote_block_ids",
            "dla.promote_block_logits",
            "dla.demote_block_ids",
            "dla.demote_block_logits",
            "dla.promote_head_ids",
            "dla.promote_head_logits",
            "dla.demote_head_ids",
            "dla.demote_head_logits",
            "dla.token_texts",
        ],
    ),
    _e(
        key="flow_routes",
        title="Information-flow routes",
        kind="attribution",
        short=(
            "Information-flow routes: the graph of residual states the chosen token's prediction is built from, "
            "edges = contributions above a threshold."
        ),
        formula_latex=(
            r"\mathrm{prox}(c, y) = \max(\lVert y\rVert_1 - \lVert y - c\rVert_1,\ 0),\qquad "
            r"w(c \to y) = \frac{\mathrm{prox}(c, y)}{\sum_{c'} \mathrm{prox}(c', y)},\qquad "
            r"c_{j\to i} = \sum_h A^{l,h}_{ij}\, v^{l,h}_j W_O^{l,h}"
        ),
        formula_plain=(
            "prox(c, y) = max(‖y‖₁ − ‖y − c‖₁, 0); w(c → y) = prox(c, y) / Σ_c' prox(c', y); the parts of the "
            "state after attention y_i are the residual x_i, one vector per source token "
            "c_{j→i} = Σ_h A_ij^{l,h} v_j^{l,h} W_O^{l,h} and the output bias; after the MLP: the residual "
            "and the MLP update"
        ),
        definition=(
            "Ferrando & Voita (2024) build, from one forward pass, a graph whose nodes are residual states "
            "(layer, position) and whose edges carry how much of a state comes from each earlier state: "
            "attention edges j → i (through all heads of a block), residual edges and MLP edges. Each state's "
            "contributions are in [0, 1] and sum to 1. Keeping the edges above a threshold (default 0.04, as in "
            "the LLM Transparency Tool) and walking back from the chosen token's last state gives its routes. "
            "The result holds every contribution (attention [L, T, T]; residual, attention bias, MLP and MLP "
            "residual [L, T]) and, for edges of at least 0.005, each head's own proximity share (the "
            "tooltips). "
            "Changing the token or the threshold only prunes these arrays."
        ),
        high="A thick edge: the state is mostly made of that source (a token it attends to, the MLP, or the residual).",
        low="Thin or pruned edges: minor contributions; below the threshold they disappear from the graph.",
        encoder_vs_decoder=(
            "Decoders attend only to earlier tokens, so routes run left to right; encoders route from "
            "both sides. Post-LN models split the sum their residual LayerNorm receives."
        ),
        pitfalls=[
            "Proximity is a heuristic share of a sum, not a causal effect; a part opposite to the whole gets 0.",
            "Per-head rows are proximities of sub-parts under the same normaliser and need not add up to the "
            "edge weight; the edge is the proximity of the token's summed vector, as in the paper (the LLM "
            "Transparency Tool makes every token-head pair a part, H times the cost).",
            "The residual edge usually dominates; a low threshold shows more routes but a dense, hard-to-read graph.",
        ],
        references=[R_FERRANDO, R_LLMTT],
        sources=[
            "flow.n_layers",
            "flow.n_heads",
            "flow.tokens",
            "flow.attn",
            "flow.attn_residual",
            "flow.attn_bias",
            "flow.mlp",
            "flow.mlp_residual",
            "flow.head_layer",
            "flow.head_target",
            "flow.head_source",
            "flow.head_index",
            "flow.head_weight",
            "flow.position",
            "flow.threshold",
            "flow.notes",
        ],
    ),
    _e(
        key="fig_dla",
        title="Direct logit attribution map",
        kind="figure",
        short="Each head's and each MLP's direct contribution to the attributed token's logit.",
        definition="Layers (rows, first block at the bottom) × heads, plus one MLP column, in diverging colours.",
        how_to_read=(
            "Red cells push the token up, blue cells push it down; white is no direct effect. The title gives "
            "the embedding's and the biases' totals, which complete the sum to the logit."
        ),
        files=["plots/direct_logit_attribution.png"],
    ),
    _e(
        key="fig_flow_routes",
        title="Information-flow routes graph",
        kind="figure",
        short="The routes to the chosen token: states as dots, contributions above the threshold as edges.",
        definition=(
            "A layered drawing: x = token position, y = stage (embeddings at the bottom; per block the state "
            "after attention, the MLP (red dot) and the block output)."
        ),
        how_to_read=(
            "Follow the thick lines down from the top: blue edges are attention from another token, grey the "
            "residual stream, red the MLP. A route that jumps to another token shows where the information "
            "was moved from."
        ),
        files=["plots/flow_routes.png"],
    ),
]

# Causal evidence (core/studies/patching.py, core/steps/ablation.py)
# --------------------------------------------------------------------------------------------------------------
R_MENG = "Meng, K. et al. (2022). Locating and editing factual associations in GPT."
R_HEIMERSHEIM = "Heimersheim, S. & Nanda, N. (2024). How to use and interpret activation patching."
R_ZHANG_NANDA = "Zhang, F. & Nanda, N. (2024). Towards best practices of activation patching in language models."
R_WANG_IOI = "Wang, K. et al. (2023). Interpretability in the wild: a circuit for indirect object identification."
P_TINY_DENOMINATOR = (
    "'restored' divides by m_clean − m_corrupted: when the two runs give almost the same logit "
    "difference (|m_clean − m_corrupted| < 0.1) the ratio blows up and its sign is noise. The page "
    "and patching.json warn; choose a pair of texts whose answers differ clearly."
)

_CAUSAL = [
    _e(
        key="activation_patching",
        title="Activation patching (causal tracing)",
        kind="causal",
        short="Restored = (m_patched − m_corrupted) / (m_clean − m_corrupted), m = logit(A) − logit(B) at the target.",
        formula_latex=(
            r"m = z_A - z_B,\qquad \mathrm{restored}(l, p) = "
            r"\frac{m\big(\text{corrupted run},\ h^{l}_{p} \gets h^{l}_{p,\mathrm{clean}}\big) - "
            r"m_{\mathrm{corrupted}}}{m_{\mathrm{clean}} - m_{\mathrm{corrupted}}}"
        ),
        formula_plain=(
            "m = logit_A − logit_B at the target;  restored(l, p) = (m of the corrupted run with the input "
            "of block l at position p replaced by the clean run's − m_corrupted) / (m_clean − m_corrupted)"
        ),
        definition=(
            "Two texts of the same token length: a clean one and a corrupted one that changes the answer. A "
            "is the clean run's top prediction at the target (last token for a causal LM, the first mask "
            "for a masked LM), B the corrupted run's (or both given). For every block l and position p the "
            "corrupted run is repeated with the residual stream entering block l at p (transformers' "
            "hidden_states[l]) copied from the clean run; 'restored' says how much of the clean answer "
            "comes back. All positions of one block run as one batched forward pass. Sanity rows: every "
            "position of block 0 restores exactly 1, patching nothing restores 0."
        ),
        high=(
            "Near 1: the clean activation at (l, p) alone carries what decides A over B; the information sits "
            "there at that depth."
        ),
        low=("Near 0: that activation alone does not matter for this answer; negative: patching it pushes towards B."),
        encoder_vs_decoder=(
            "Causal LMs: information can only flow rightwards, so early layers light up at the "
            "changed token and late layers at the last position. Masked LMs: every position can "
            "read every other, and the map is often spread over positions."
        ),
        pitfalls=[
            P_TINY_DENOMINATOR,
            "Patching one position of one layer tests sufficiency of that single activation; a flat map can "
            "mean the information is spread over several positions (try the components at every position).",
            "The corruption defines the question: swapping a name tests where that name is used, not what "
            "the model knows in general (Heimersheim & Nanda 2024).",
            "Logit differences, not probabilities: 'restored' > 1 or < 0 is possible (overshoot).",
        ],
        references=[R_MENG, R_HEIMERSHEIM, R_ZHANG_NANDA, R_WANG_IOI],
        sources=["core.studies.patching:run_patching", "core.studies.patching:patch"],
    ),
    _e(
        key="patching_components",
        title="Component patching (attention and MLP outputs)",
        kind="causal",
        short="Restored when block l's attention or MLP output is copied from the clean run (every position, or one).",
        formula_latex=(
            r"\mathrm{restored}_{c}(l) = \frac{m\big(\text{corrupted},\ o^{l}_{c} \gets "
            r"o^{l}_{c,\mathrm{clean}}\big) - m_{\mathrm{corrupted}}}{m_{\mathrm{clean}} - "
            r"m_{\mathrm{corrupted}}},\qquad c \in \{\mathrm{attention}, \mathrm{MLP}\}"
        ),
        formula_plain=(
            "restored_c(l) = (m of the corrupted run with the output o_c of block l's component c copied "
            "from the clean run − m_corrupted) / (m_clean − m_corrupted), c = attention or MLP"
        ),
        definition=(
            "The same measurement for what a block's attention and MLP add to the residual stream: the "
            "output of the attention output projection (GPT-2 attn.c_proj, Llama o_proj, BERT "
            "attention.output.dense) and of the MLP's down projection, before dropout, the residual add "
            "and BERT's post-LayerNorm. Patched at every position at once (position −1 in patching.csv, "
            "the bars) and at each position (the heatmap)."
        ),
        high="The block's attention (or MLP) output carries the answer-deciding information.",
        low="That component adds nothing this corruption changes.",
        encoder_vs_decoder=(
            "In GPT-style models factual recall often shows in mid-layer MLPs at the subject's last "
            "token and late attention moving it to the last position (Meng et al. 2022)."
        ),
        pitfalls=[
            P_TINY_DENOMINATOR,
            "A component's output also feeds every later block: its effect includes what later blocks do "
            "with it (total effect, not direct effect).",
        ],
        references=[R_MENG, R_HEIMERSHEIM],
        sources=["core.studies.patching:patched_metrics"],
    ),
    _e(
        key="head_ablation",
        title="Exact head ablation",
        kind="causal",
        short="Change of log p of the prediction when one head's output is replaced by its mean over positions (or 0).",
        formula_latex=(
            r"\Delta^{l,h} = \log p\big(y^{*} \mid z^{l}_{:,h} \gets \bar z^{l}_{h}\big) - "
            r"\log p(y^{*} \mid x),\qquad \bar z^{l}_{h} = \frac{1}{T}\sum_t z^{l}_{t,h}"
            r"\ \ (\text{zero variant: } 0)"
        ),
        formula_plain=(
            "Δ(l,h) = log p(y* | head h of layer l replaced by its mean over positions) − log p(y* | x); "
            "zero variant: replaced by 0; z = input of the attention output projection"
        ),
        definition=(
            "For every head, its slice of the input of the attention output projection (its output before "
            "the heads are mixed) is replaced at every position by its mean over the text's positions "
            "(mean ablation: the head's average contribution stays, what it says about this text goes) or "
            "by zero, and the model runs on. Δ is the change of the log-probability of the predicted token "
            "at the target. All heads of a layer run as one batched forward pass (batch 2·H). Opt-in "
            "(the Head ablation setting, CLI --head-ablation). Shown beside the gradient head score, its "
            "first-order estimate, with their Spearman correlation."
        ),
        high="A large negative Δ (large drop): the prediction needs this head.",
        low="Δ near 0: the head can be removed without changing this prediction; positive: it works against it.",
        encoder_vs_decoder="Works the same for encoders with an MLM head and decoders (target: mask / last token).",
        pitfalls=[
            "One head at a time: redundant heads (backups) each look unimportant although removing both would hurt.",
            "Zero ablation pushes the model off its usual inputs; mean ablation is the gentler test. A large "
            "difference between the two columns is itself a warning.",
            "A low Spearman ρ with the gradient score means the first-order score misleads for this text.",
        ],
        references=[R_MICHEL, R_HEIMERSHEIM, R_SPEARMAN],
        sources=[
            "head_ablation.target_position",
            "head_ablation.token_id",
            "head_ablation.token",
            "head_ablation.logprob",
            "head_ablation.mean_ablation",
            "head_ablation.zero_ablation",
            "head_ablation.method",
            "head_ablation.notes",
        ],
    ),
    _e(
        key="fig_head_ablation",
        title="Head ablation map",
        kind="figure",
        short="Mean-ablation drop of log p per head, and the gradient head score against the exact zero-ablation drop.",
        definition=(
            "Left: layer × head heatmap of −Δ for mean ablation (red = the prediction needs the head). "
            "Right: one point per head, gradient score (x) against the zero-ablation drop (y), with the "
            "diagonal and Spearman ρ."
        ),
        how_to_read=(
            "Points near the diagonal: the gradient score is a good estimate; points far from it are heads "
            "where the linear picture misleads (saturation, interactions)."
        ),
        files=["plots/head_ablation.png"],
    ),
]

# Corpus mode (core/studies/geometry.py, core/studies/corpus.py): pooled token states of many texts, per layer
# --------------------------------------------------------------------------------------------------------------
R_FACCO = (
    "Facco, E., d'Errico, M., Rodriguez, A. & Laio, A. (2017). Estimating the intrinsic dimension of datasets "
    "by a minimal neighborhood information."
)
R_VALERIANI = "Valeriani, L. et al. (2023). The geometry of hidden representations of large transformer models."
R_RAZZHIGAEV = (
    "Razzhigaev, A. et al. (2024). Your transformer is secretly linear (LLM-Microscope: anisotropy and "
    "linearity of transformer layers)."
)
R_EFRON = "Efron, B. & Tibshirani, R. J. (1993). An Introduction to the Bootstrap."
P_POOL_SAMPLE = (
    "The pool is a seeded uniform sample of at most max_points token states (special tokens excluded by "
    "default); the numbers depend on the corpus, the sample size and the token selection. Compare "
    "models or layers on the same corpus and settings."
)
P_PAIRS_NEED_TEXTS = (
    "Points of one text share context and position, so they are not independent: the intervals "
    "resample whole texts, and a corpus of few texts gives wide intervals (one text: none)."
)

_CORPUS = [
    _e(
        key="corpus_spectral",
        title="Pooled spectral metrics (effective rank, participation ratio, d95)",
        kind="corpus",
        short="The single-text spectral metrics computed on the token states pooled over the whole corpus.",
        formula_latex=(
            r"X^{l} = [h^{l}_{t}]_{t \in \mathcal{P}},\qquad \lambda = \mathrm{eig}\big((X^{l} - "
            r"\mathbf{1}\bar x^{l\top})^{\top}(X^{l} - \mathbf{1}\bar x^{l\top})\big),\qquad "
            r"\mathrm{erank},\ \mathrm{PR},\ d_{95} \text{ as for one text}"
        ),
        formula_plain=(
            "X = the pooled states P of layer l (N × D); λ = eigenvalues of the scatter of X centred over "
            "the pool; effective rank, participation ratio and d95 from λ as for one text"
        ),
        definition=(
            "The effective rank, participation ratio and 95 %-variance dimension of the token states of "
            "every text pooled together (a seeded uniform sample of at most max_points states), centred on "
            "the mean over the pool. Unlike the single-text values they are not capped by one text's length "
            "(T − 1) but by the pool size and the hidden width."
        ),
        high="The layer spreads the corpus's tokens over many directions.",
        low="The corpus's tokens share a few dominant directions (often outlier dimensions).",
        encoder_vs_decoder=(
            "Decoders usually show a pooled participation ratio near 1 - 3 in the middle layers "
            "(massive activations) while the effective rank stays high; encoders are flatter."
        ),
        pitfalls=[
            P_POOL_SAMPLE,
            P_CENTRING,
            P_SPECIAL,
            "The bound is min(N − 1, D) for N pooled points: with fewer points than the hidden width the "
            "metrics again measure the sample size.",
        ],
        references=[R_ROY, R_PR, R_VALERIANI],
        sources=["core.studies.geometry:spectral_metrics"],
    ),
    _e(
        key="twonn_dimension",
        title="TwoNN intrinsic dimension",
        kind="corpus",
        short="TwoNN: intrinsic dimension from the ratio of each point's second to first nearest-neighbour distance.",
        formula_latex=(
            r"\mu_i = \frac{r_2(i)}{r_1(i)},\qquad -\ln\big(1 - F(\mu)\big) = d \ln \mu,"
            r"\qquad \hat d = \frac{\sum_i x_i y_i}{\sum_i x_i^2} \text{ over the 90\% smallest } \mu"
        ),
        formula_plain=(
            "μ_i = r2(i) / r1(i) (distances to the two nearest neighbours); fit −ln(1 − F(μ)) = d·ln μ "
            "through the origin over the 90 % smallest μ, F_i = i/N"
        ),
        definition=(
            "A nonlinear intrinsic dimension of the pooled point cloud (Facco et al. 2017): for points on a "
            "d-dimensional manifold, μ follows a Pareto law with exponent d, so d is the slope of "
            "−ln(1 − F(μ)) against ln μ. Exact duplicate points (the same token at the same position gives "
            "identical embedding states) are removed first and counted; the largest 10 % of μ are dropped."
        ),
        high="The states vary in many independent directions locally (a high-dimensional manifold).",
        low=(
            "The states lie near a low-dimensional manifold; Valeriani et al. (2023) find a rise in early layers, a "
            "peak, then a drop in the middle layers of trained transformers."
        ),
        encoder_vs_decoder=(
            "Both show the rise-peak-fall profile in trained models; random-weight models show no "
            "such profile, which makes them a useful baseline."
        ),
        pitfalls=[
            "Duplicates make r1 = 0; exact duplicates and points within float round-off (1e-5 of the RMS norm) "
            "of an earlier point are removed and counted. Near-duplicates beyond that (tiny r1) push μ up.",
            P_POOL_SAMPLE,
            "TwoNN underestimates large dimensions (above ~20 it needs exponentially many points).",
            "It is scale-dependent: tight clusters (the same token in nearly the same context, common in "
            "random-weight models) give many tiny r1 and values below 1; compare layers of one corpus.",
        ],
        references=[R_FACCO, R_VALERIANI],
        sources=["core.studies.geometry:twonn_dimension"],
    ),
    _e(
        key="anisotropy_cosine",
        title="Anisotropy (mean cosine between texts)",
        kind="corpus",
        short="Mean cosine similarity over all pairs of pooled token states that come from different texts.",
        formula_latex=(
            r"\mathrm{aniso}_{\cos} = \frac{1}{|\mathcal{Q}|}\sum_{(i,j) \in \mathcal{Q}} "
            r"\frac{x_i^{\top} x_j}{\lVert x_i\rVert \lVert x_j\rVert},\qquad "
            r"\mathcal{Q} = \{(i,j) : \mathrm{text}(i) \ne \mathrm{text}(j)\}"
        ),
        formula_plain="aniso_cos = mean over pairs (i, j) from different texts of cos(x_i, x_j)",
        definition=(
            "Ethayarajh's (2019) anisotropy baseline: how similar two unrelated token representations are on "
            "average. Pairs within a text are left out (they share context). Computed exactly, not sampled: "
            "with û the unit rows and s_g the sum of text g's û (block sums of the normalised Gram matrix), "
            "the sum over cross-text pairs is ‖Σ_g s_g‖² − Σ_g ‖s_g‖²."
        ),
        high=(
            "Near 1: all states point in nearly the same direction (a dominant common direction, typical of the "
            "upper layers of GPT-2)."
        ),
        low="Near 0: directions are spread like an isotropic cloud; negative values are rare.",
        encoder_vs_decoder=(
            "Ethayarajh (2019) reports anisotropy growing with depth in both, strongest in GPT-2's "
            "upper layers (cosines above 0.9)."
        ),
        pitfalls=[
            "Not centred: a common mean vector alone makes the cosine large; the anisotropy (top principal "
            "component share) is the centred counterpart.",
            P_PAIRS_NEED_TEXTS,
        ],
        references=[R_ETHAYARAJH],
        sources=["core.studies.geometry:anisotropy_cosine"],
    ),
    _e(
        key="anisotropy_top_pc",
        title="Anisotropy (top principal component share)",
        kind="corpus",
        short="Share of the pooled variance on the first principal direction: λ_max / Σλ (LLM-Microscope).",
        formula_latex=r"\mathrm{aniso}_{\mathrm{PC}} = \frac{\lambda_{\max}}{\sum_k \lambda_k},\qquad \lambda = \mathrm{eig}\,\mathrm{cov}(X^{l})",
        formula_plain="aniso_PC = λ_max / Σ_k λ_k, λ the covariance eigenvalues of the centred pool",
        definition=(
            "The fraction of the pooled (centred) variance that lies on the single largest principal "
            "direction, as defined in LLM-Microscope (Razzhigaev et al. 2024). 1/D for an isotropic cloud."
        ),
        high="One direction carries most of the variation (an outlier dimension or a rogue direction).",
        low="Variance is spread over many directions.",
        encoder_vs_decoder=(
            "Decoders with massive activations show high values in the middle layers; encoders usually lower."
        ),
        pitfalls=[
            "Centred, unlike the cosine anisotropy: the two can disagree (a large common mean gives a high "
            "cosine but need not give a high top-PC share).",
            P_POOL_SAMPLE,
        ],
        references=[R_RAZZHIGAEV],
        sources=["core.studies.geometry:anisotropy_top_pc"],
    ),
    _e(
        key="linearity",
        title="Linearity between consecutive layers",
        kind="corpus",
        short="How well one linear map takes layer l−1 to layer l (LLM-Microscope's Procrustes score; 1 = linear).",
        formula_latex=(
            r"\tilde X = \frac{X - \bar X}{\lVert X - \bar X\rVert_F},\ "
            r"\tilde Y = \frac{Y - \bar Y}{\lVert Y - \bar Y\rVert_F},\qquad "
            r"\mathrm{lin} = 1 - \min_{A}\lVert \tilde X A - \tilde Y\rVert_F^2"
        ),
        formula_plain=(
            "centre X = layer l−1 and Y = layer l over the pool, divide each by its Frobenius norm; "
            "linearity = 1 − min_A ‖XA − Y‖²_F (least squares)"
        ),
        definition=(
            "The fraction of layer l's (normalised, centred) pooled states that a single least-squares "
            "linear map from layer l−1 explains (Razzhigaev et al. 2024). Computed as ‖P_X Y‖²/‖Y‖² with P_X "
            "the projection on X's column space. Layer 0 has no value."
        ),
        high="The block acts almost linearly on the residual stream (typical: most blocks score above 0.9).",
        low="The block's nonlinearity (attention mixing, MLP) changes the representation substantially.",
        encoder_vs_decoder=(
            "LLM-Microscope reports near-linear blocks in decoders, with the first and last blocks least linear."
        ),
        pitfalls=[
            "With N pooled points not well above the hidden width D the least-squares map fits any Y: "
            "linearity tends to 1 by construction. Use max_points ≥ several × D.",
            P_POOL_SAMPLE,
        ],
        references=[R_RAZZHIGAEV],
        sources=["core.studies.geometry:linearity"],
    ),
    _e(
        key="corpus_bootstrap",
        title="Bootstrap intervals over texts",
        kind="corpus",
        short="95 % percentile intervals from resampling whole texts with replacement (default 200 resamples).",
        formula_latex=(
            r"\theta^{*}_b = \theta\big(\{\text{texts drawn with replacement}\}_b\big),\qquad "
            r"\mathrm{CI}_{95} = \big[q_{0.025}(\theta^{*}),\ q_{0.975}(\theta^{*})\big]"
        ),
        formula_plain="θ*_b = the metric on resample b of the texts (drawn with replacement); CI = [2.5 %, 97.5 %] "
        "percentiles of θ*",
        definition=(
            "Each resample draws as many texts as the corpus has, with replacement, and recomputes every "
            "pooled metric; the interval holds the middle 95 % of the resampled values (seeded, so it is "
            "reproducible). Nothing is recomputed from the points: per-text blocks of the Gram and scatter "
            "matrices built once per layer make a resample a weighted sum of blocks. Cosine anisotropy is "
            "exact; spectra are exact in the top bootstrap_rank principal directions, with the remaining "
            "variance exact in total and its shape held at the full pool's (exact when the rank is below "
            "bootstrap_rank); linearity is computed in the two top bases and corrected by its truncation "
            "bias at the full corpus; TwoNN reuses each point's stored nearest neighbours."
        ),
        high="A wide interval: the metric depends strongly on which texts are in the corpus; add texts.",
        low="A narrow interval: the estimate is stable under resampling the texts.",
        encoder_vs_decoder="Same procedure for every model family.",
        pitfalls=[
            P_PAIRS_NEED_TEXTS,
            "The interval covers the variation across texts of this kind only; it says nothing about other "
            "corpora, and nothing about the sampling of tokens within texts (max_points).",
        ],
        references=[R_EFRON],
        sources=["core.studies.geometry:pooled_geometry"],
    ),
]


# --------------------------------------------------------------------------------------------------------------
# Comparison of layers and runs (core/studies/compare.py)
# --------------------------------------------------------------------------------------------------------------
R_KORNBLITH = "Kornblith, S. et al. (2019). Similarity of neural network representations revisited."
R_SONG = "Song, L. et al. (2012). Feature selection via dependence maximization (unbiased HSIC estimator)."
R_NGUYEN = (
    "Nguyen, T., Raghu, M. & Kornblith, S. (2021). Do wide and deep networks learn the same things? "
    "Uncovering how neural network representations vary with width and depth."
)
R_GRETTON = "Gretton, A. et al. (2005). Measuring statistical dependence with Hilbert-Schmidt norms."
R_DAVARI = "Davari, M. et al. (2023). Reliability of CKA as a similarity measure in deep learning."

_COMPARISON = [
    _e(
        key="linear_cka",
        title="Linear CKA (centred kernel alignment)",
        kind="comparison",
        short="Linear CKA: similarity of two layers' token geometry, 1 = same up to rotation and scale, 0 = unrelated.",
        formula_latex=(
            r"\mathrm{CKA}(X,Y) = \frac{\mathrm{HSIC}(K,L)}{\sqrt{\mathrm{HSIC}(K,K)\,\mathrm{HSIC}(L,L)}},"
            r"\quad K = XX^{\top},\ L = YY^{\top}"
            r",\qquad \mathrm{HSIC}_0(K,L) = \frac{\mathrm{tr}(KHLH)}{(n-1)^{2}},"
            r"\quad H = I - \tfrac{1}{n}\mathbf{1}\mathbf{1}^{\top}"
            r",\qquad \mathrm{HSIC}_1(K,L) = \frac{1}{n(n-3)}\Big[\mathrm{tr}(\tilde K\tilde L) + "
            r"\frac{\mathbf{1}^{\top}\tilde K\mathbf{1}\;\mathbf{1}^{\top}\tilde L\mathbf{1}}{(n-1)(n-2)} - "
            r"\frac{2}{n-2}\,\mathbf{1}^{\top}\tilde K\tilde L\mathbf{1}\Big]"
        ),
        formula_plain=(
            "CKA(X, Y) = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)),  K = X Xᵀ, L = Y Yᵀ (rows = the n tokens);  "
            "centred: HSIC₀(K, L) = tr(K H L H) / (n − 1)², H = I − 11ᵀ/n;  "
            "debiased: HSIC₁(K, L) = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n − 1)(n − 2)) − 2/(n − 2) · 1ᵀK̃L̃1] "
            "/ (n(n − 3)), K̃, L̃ = K, L with zero diagonal"
        ),
        definition=(
            "How similar two representations of the same tokens are, compared through their token-by-token "
            "similarity structure: X and Y are the hidden states of two layers (T tokens × width, widths may "
            "differ), K and L their Gram matrices. CKA is the cosine between the centred Gram matrices. It is "
            "invariant to rotating and uniformly rescaling either representation, but not to arbitrary linear "
            "maps. The Layer Analysis page shows it for every pair of layers of one run; the Compare page for "
            "every layer of run A against every layer of run B, when both runs hold the same tokens. The "
            "debiased variant uses the unbiased HSIC estimator (Song et al. 2012), as Nguyen et al. (2021) "
            "do for CKA."
        ),
        high=(
            "Close to 1: the two layers arrange the tokens the same way (same distances and angles up to a rotation "
            "and a scale). Between neighbouring layers: the block barely moved the representation. Between two "
            "models on one text: they encode the text alike at those depths."
        ),
        low=(
            "Close to 0: the token geometry of one layer says nothing linear about the other's. Between neighbouring "
            "layers: the block rewrote the representation; a bright diagonal with dark off-diagonal blocks shows "
            "distinct stages of processing."
        ),
        encoder_vs_decoder=(
            "Decoders (GPT-2, Llama) often show one huge block of high CKA over the middle layers: the "
            "first-token attention sink and a few massive activation dimensions dominate every Gram "
            "matrix. Encoders (BERT) usually show a smoother decay of CKA with layer distance."
        ),
        pitfalls=[
            "CKA needs the SAME tokens on both sides (same text, shared tokenizer): it compares token i of A "
            "with token i of B. Two texts, or two tokenizers, give no CKA; the Compare page says so.",
            "With few tokens and wide layers the centred estimator is biased upwards: even independent random "
            "representations score well above 0 when the width is comparable to the token count. Use the "
            "debiased variant (it needs at least 4 tokens) before reading much into mid-range values.",
            "Linear CKA is dominated by the directions of largest variance: one outlier token (an attention "
            "sink, BOS, [CLS]) or a massive activation dimension can make two layers look alike when the rest "
            "differs (Davari et al. 2023). Compare with a text without the outlier, or with special tokens "
            "excluded.",
            "One text is one sample of tokens; CKA over 10 tokens is a rough estimate. Above 1024 tokens the "
            "dashboard uses 1024 evenly spaced tokens (it says so).",
        ],
        references=[R_KORNBLITH, R_SONG, R_NGUYEN, R_GRETTON, R_DAVARI],
        sources=["core.studies.compare:linear_cka", "core.studies.compare:layer_cka", "core.studies.compare:compare"],
    ),
]

DOCS: dict[str, DocEntry] = {
    e.key: e
    for e in (
        *_LAYER,
        *_ATTENTION,
        *_ATTRIBUTION,
        *_PREDICTION,
        *_LENS,
        *_FIGURES,
        *_PEERS,
        *_CAUSAL,
        *_NEURONS,
        *(_e(**kw) for kw in SAE_ENTRIES),
        *_CORPUS,
        *_COMPARISON,
    )
}


# --------------------------------------------------------------------------------------------------------------
# Methodology and visual guide
# --------------------------------------------------------------------------------------------------------------
METHODOLOGY: list[tuple[str, str]] = [
    (
        "One forward pass",
        "The text is tokenised (truncated to the Max tokens setting, special tokens included) and run once through the model with "
        "output_hidden_states and output_attentions, under torch inference mode and the model's lock (one loaded model "
        "serves every session). Every page, chart and export is computed from this one capture; only the gradient "
        "attributions and the optional generation run the model again.",
    ),
    (
        "Eager attention",
        "Models are loaded with attn_implementation='eager'. Fused kernels (SDPA, FlashAttention) never materialise the "
        "attention matrix, so they cannot return attention weights; eager attention gives the exact softmax weights "
        "[L, H, T, T] whose rows sum to 1.",
    ),
    (
        "Last hidden state before the final norm",
        "Libraries return the last hidden state after the model's final norm (GPT-2 ln_f, Llama RMSNorm) but the "
        "others before it. A hook captures the input of the final norm instead, so all L+1 states are raw residual "
        "stream: the layer metrics compare like with like, and the logit lens applies the final norm uniformly (its "
        "last layer equals the model's logits). Models without a final norm (BERT) are unaffected.",
    ),
    (
        "Centring",
        "The spectral metrics (effective rank, participation ratio, intrinsic dimensionality) subtract the mean token "
        "vector of the layer first and use the eigenvalues of the smaller Gram matrix of the centred T×D matrix "
        "(exact, in float64). After centring the rank is at most T−1, so none of these metrics can exceed the token "
        "count minus one. Activation entropy and cosine to input use the raw states.",
    ),
    (
        "Special tokens",
        "Special tokens ([CLS], [SEP], BOS, EOS) are marked by the tokenizer. With 'exclude special tokens' their rows "
        "are removed before the layer metrics; attention analyses and attributions always see every token, since the "
        "model attends to them.",
    ),
    (
        "Target position for attribution",
        "Masked LMs: the first [MASK] token (or the last non-special token when there is none). Causal LMs: the last "
        "token (the next-token prediction). Encoders without an LM head: position 0. A position set by the user "
        "overrides this; the reason is written into the manifest. The attributed quantity f is the log-probability "
        "of the model's top prediction at the target position.",
    ),
    (
        "What the cache key holds",
        "A SHA-256 over the core version (bumped whenever a formula changes), the model id, its resolved revision (or "
        "a fingerprint of a local folder), dtype, device, the exact text and every analysis setting. A change to any "
        "of them computes a new result; the cache is bounded and evicts the least recently used entries.",
    ),
    (
        "Precision and dtype",
        "Weights run in the chosen dtype (float32 on CPU by default, bfloat16 on CUDA). Captured states and attentions "
        "are converted to float32 for storage, and all metrics are computed in float64. Half precision can shift "
        "small eigenvalues (and so intrinsic dimensionality by a component or two) and the low-probability tail of "
        "predictions; use float32 for exact comparisons. hidden_states.npz in the export is float16 to save space.",
    ),
    (
        "Reproducibility",
        "Models run in eval mode (no dropout); results depend only on the key above. The manifest.json of every "
        "export records the model, revision, settings, package versions and timings.",
    ),
    (
        "Integrated gradients across tools",
        "Our convention: attribution to the token embeddings only (the tensor passed as inputs_embeds; position "
        "embeddings are added inside the model and are not interpolated), a zero baseline, the log-probability of the "
        "predicted token as the target, and the signed sum over the hidden dimension per token. The integral uses "
        "Gauss–Legendre nodes in u with α = u³ (measured: on a tiny Llama with realistic weights 32 nodes leave a 25 % "
        "completeness gap with α = u and under 0.01 % with α = u³), doubled until the gap is at most 1 %. captum's "
        "IntegratedGradients defaults to 50 Gauss–Legendre steps in α, and its LayerIntegratedGradients on the "
        "embedding layer attributes the full embedding output (token + position + type embeddings); inseq's common "
        "defaults aggregate each token's attribution vector by its L2 norm (unsigned), take the probability (not the "
        "log-probability) of the generated token, and many setups use an UNK or PAD token embedding as the baseline. "
        "Each choice changes the numbers: to compare, align all four (captum with forward_func = inputs_embeds → "
        "log p, baselines = 0, method 'gausslegendre', attributions summed over the last dimension gives exactly our "
        "α = u rule).",
    ),
    (
        "Causal evidence",
        "Activation patching and head ablation intervene on the model: they change an activation and run the rest "
        "of the network, so they say what the prediction needs, not where the model looks. Every patched or ablated "
        "variant of one layer runs as one batched forward pass (the batch rows differ only in what is replaced); "
        "hooks exist only during that pass and are removed in a finally block, so a later analysis gives identical "
        "numbers. Patching results are cached like analyses, keyed on the model revision, both texts, the answers, "
        "the settings and the core version.",
    ),
]

VISUAL_GUIDE: list[tuple[str, str]] = [
    (DOCS[k].title, DOCS[k].how_to_read) for k in DOCS if DOCS[k].kind in ("figure", "animation")
]


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def doc(key: str) -> DocEntry:
    """The entry for `key`; KeyError names the known keys."""
    try:
        return DOCS[key]
    except KeyError:
        raise KeyError(f"no documentation entry {key!r}; known: {', '.join(DOCS)}") from None


def caption(key: str) -> str:
    """One short line for a chart caption or tooltip."""
    return doc(key).short


def entries(kind: str | None = None) -> list[DocEntry]:
    """All entries in display order, or those of one kind (see KINDS)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return [e for e in DOCS.values() if kind is None or e.kind == kind]


def formula_text(key: str) -> str:
    """The formula as plain (Unicode) text for the PDF; "" for figures."""
    return doc(key).formula_plain


def interpretation(key: str) -> str:
    """One paragraph: definition, then how to read high and low values (used by the PDF report)."""
    e = doc(key)
    parts = [e.definition]
    if e.high:
        parts.append(f"High: {e.high}")
    if e.low:
        parts.append(f"Low: {e.low}")
    if e.how_to_read:
        parts.append(e.how_to_read)
    return " ".join(parts)


def figure_doc(filename: str) -> DocEntry | None:
    """The figure/animation entry whose `files` pattern matches a bundle member name, or None."""
    for e in DOCS.values():
        if any(fnmatch.fnmatchcase(filename, pat) for pat in e.files):
            return e
    return None


def metric_label(name: str) -> str:
    """Display title of a layer metric or analysis key (falls back to the key itself)."""
    return DOCS[name].title if name in DOCS else name
