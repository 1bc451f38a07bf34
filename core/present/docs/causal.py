"""Causal evidence: activation patching and exact head ablation.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import R_MICHEL, R_SPEARMAN

R_MENG = "Meng, K. et al. (2022). Locating and editing factual associations in GPT."
R_HEIMERSHEIM = "Heimersheim, S. & Nanda, N. (2024). How to use and interpret activation patching."
R_ZHANG_NANDA = "Zhang, F. & Nanda, N. (2024). Towards best practices of activation patching in language models."
R_WANG_IOI = "Wang, K. et al. (2023). Interpretability in the wild: a circuit for indirect object identification."
R_NANDA_ATP = "Nanda, N. (2023). Attribution patching: activation patching at industrial scale."
R_KRAMAR_ATP = (
    "Kramár, J. et al. (2024). AtP*: an efficient and scalable method for localizing LLM behaviour to components."
)
R_SYED_ATP = "Syed, A. et al. (2023). Attribution patching outperforms automated circuit discovery."
P_TINY_DENOMINATOR = (
    "'restored' divides by m_clean − m_corrupted: when the two runs give almost the same logit "
    "difference (|m_clean − m_corrupted| < 0.1) the ratio blows up and its sign is noise. The page "
    "and patching.json warn; choose a pair of texts whose answers differ clearly."
)

_CAUSAL: list[DocEntry] = [
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
            "for a masked LM), B the corrupted run's (or both given). For every block l = 1…L and position p the "
            "corrupted run is repeated with the residual stream entering block l at p (transformers' "
            "hidden_states[l − 1]) copied from the clean run; 'restored' says how much of the clean answer "
            "comes back. All positions of one block run as one batched forward pass. Sanity rows: every "
            "position of block 1 restores exactly 1, patching nothing restores 0."
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
        key="attribution_patching",
        title="Attribution patching (AtP)",
        kind="causal",
        short="AtP ≈ (a_clean − a_corrupted) · ∂m/∂a at the corrupted run, over m_clean − m_corrupted: exact patching to "
        "first order, every site from one backward pass.",
        formula_latex=(
            r"\mathrm{atp}(s) = \frac{\big(a_{s,\mathrm{clean}} - a_{s,\mathrm{corrupted}}\big)\cdot "
            r"\left.\frac{\partial m}{\partial a_s}\right|_{\mathrm{corrupted}}}{m_{\mathrm{clean}} - "
            r"m_{\mathrm{corrupted}}},\qquad \mathrm{atp}(l, \mathrm{all}) = \sum_p \mathrm{atp}(l, p)"
        ),
        formula_plain=(
            "atp(site) = (a_clean − a_corrupted) · ∂m/∂a at the corrupted run / (m_clean − m_corrupted), "
            "m = logit_A − logit_B; the all-positions row of a block is the sum over its positions"
        ),
        definition=(
            "The first-order Taylor estimate of activation patching (Nanda 2023; Kramár et al. 2024): patching "
            "site s (the residual stream entering block l, the attention output or the MLP output, at position p) "
            "changes m by about the difference of the clean and corrupted activations times the gradient of m "
            "there. One clean forward pass gives every a_clean, one corrupted forward and backward pass gives "
            "every a_corrupted and every gradient (a zero tensor is added at each site in a forward hook and m "
            "is differentiated with respect to it), so all 3·L·T sites cost about three passes instead of 3·L "
            "batched passes. Divided by m_clean − m_corrupted it estimates the restored fraction; over a data "
            "set of pairs it is averaged like the exact score. --atp-only runs it alone as a screen; --top K "
            "patches exactly only the K sites of largest |atp|. The page shows exact and AtP side by side and "
            "their Pearson correlation over the per-position sites."
        ),
        high="|atp| near 1: to first order this site alone carries the answer-deciding difference.",
        low="Near 0: small activation difference or small gradient at the corrupted run; exact patching may still "
        "disagree (see the pitfalls).",
        encoder_vs_decoder="Works the same for causal and masked LMs (target: last token / first mask).",
        pitfalls=[
            "Saturated softmax: when an attention pattern is nearly one-hot at the corrupted run its gradient is "
            "almost zero, so AtP reports ~0 for a site whose exact patch flips the attention and restores much "
            "(a false negative); Kramár et al. (AtP*) recompute the attention softmax for this reason.",
            "LayerNorm and other non-linearities: the estimate is linear in the activation difference; a large "
            "difference (a swapped name at the residual stream) moves the norm's scale and the MLP's gates, and "
            "the first-order term can have the wrong size or even the wrong sign. Residual sites early in the "
            "network, where the whole token changes, are where this shows most.",
            "Reading disagreement: exact ≈ AtP means the model is locally linear there and the cheap screen can "
            "be trusted; exact large but AtP small means a saturated or gated mechanism (patch it exactly); AtP "
            "large but exact small usually means cancellation further on. A correlation well below 1 is itself "
            "the warning to use --top K with a generous K rather than the screen alone.",
            "Block 0's residual at every position restores exactly 1 by construction, but its AtP is only the "
            "first-order term and is not 1 in general.",
        ],
        references=[R_NANDA_ATP, R_KRAMAR_ATP, R_SYED_ATP, R_HEIMERSHEIM],
        sources=["core.studies.pairs:atp_pass", "core.studies.pairs:run_pairs"],
    ),
    _e(
        key="pair_patching",
        title="Patching over a data set of pairs",
        kind="causal",
        short="Restored = mean over pairs of each pair's restored fraction, with a Student-t interval over pairs.",
        formula_latex=(
            r"\overline{\mathrm{restored}}(s) = \frac{1}{n}\sum_{i=1}^{n} \mathrm{restored}_i(s),\qquad "
            r"\overline{\mathrm{restored}} \pm t_{0.975,\,n-1}\,\frac{\mathrm{sd}_i\,\mathrm{restored}_i(s)}{\sqrt{n}}"
        ),
        formula_plain=(
            "mean restored(site) = (1/n) Σ_i restored_i(site) over the n pairs that are not near ties; 95 % "
            "interval = mean ± t(0.975, n − 1) · sd / √n"
        ),
        definition=(
            "Circuit papers conclude from many templated pairs (the indirect-object task uses hundreds), not from "
            "one. `python -m core patch --pairs F.csv|F.jsonl` (or the Causal page's pair data set section) runs "
            "every pair as the one-pair patching does (same target, answers = top-1 unless given by a column) "
            "and averages each pair's restored fraction per site. All pairs of a run share one token length; "
            "otherwise one line names the lengths found and how many pairs have each. patching.csv keeps "
            "layer, position, component, restored and adds n_pairs, ci_low, ci_high (the Student-t interval of "
            "the mean over pairs) and atp; patching_pairs.csv holds every pair's cells. One pair gives n_pairs = "
            "1 and no interval."
        ),
        high="A mean near 1 with a narrow interval: the site restores the answer across the data set.",
        low="A mean near 0 whose interval covers 0: no consistent effect over pairs.",
        encoder_vs_decoder="As for one pair; with a masked LM every pair needs its mask at the same position.",
        pitfalls=[
            "Near ties: a pair with |m_clean − m_corrupted| < 0.1 would dominate the mean through its tiny "
            "denominator; such pairs are counted, listed (patching.json, the page) and left out of the means, "
            "and their cells stay in patching_pairs.csv.",
            "The interval is over pairs: it says how well the mean over THIS kind of pair is pinned down, "
            "assuming pairs are independent draws; templated pairs that share names or objects are not "
            "independent, and the interval is then too narrow.",
            "A mean of ratios is not the ratio of means: pairs with small but not tiny m_clean − m_corrupted "
            "still weigh more; compare with patching_pairs.csv when a few pairs stand out.",
        ],
        references=[R_WANG_IOI, R_HEIMERSHEIM, R_ZHANG_NANDA],
        sources=["core.studies.pairs:run_pairs", "core.studies.intervals:mean_interval"],
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

ENTRIES: list[DocEntry] = [*_CAUSAL]
