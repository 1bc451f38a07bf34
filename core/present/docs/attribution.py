"""Token and head attribution (core/steps/attribution.py): rollout, gradients, integrated gradients, head scores.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import (
    P_NOT_EXPLANATION,
    P_SPECIAL,
    R_ABNAR,
    R_JAIN,
    R_MICHEL,
    R_SUNDARARAJAN,
    R_VOITA,
    R_WIEGREFFE,
)

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
R_ADEBAYO = "Adebayo, J. et al. (2018). Sanity checks for saliency maps."

_ATTRIBUTION: list[DocEntry] = [
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

ENTRIES: list[DocEntry] = [*_ATTRIBUTION]
