"""The corpus run (core/studies/corpus.py): pooled metrics, per-text summaries and intervals.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import P_CENTRING, P_SPECIAL, R_ETHAYARAJH, R_PR, R_ROY

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
R_SHAO_TU = "Shao, J. & Tu, D. (1995). The Jackknife and Bootstrap."
P_POOL_SAMPLE = (
    "The pool is a seeded uniform sample of at most max_points token states (special tokens excluded by "
    "default); the numbers depend on the corpus, the sample size and the token selection. Compare "
    "models or layers on the same corpus and settings."
)
P_PAIRS_NEED_TEXTS = (
    "Points of one text share context and position, so they are not independent: the intervals "
    "resample whole texts, and a corpus of few texts gives wide intervals (one text: none)."
)

_CORPUS: list[DocEntry] = [
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
        title="Intervals over texts: what they estimate and how",
        kind="corpus",
        short="95 % interval for the value this analysis would give, on average, on another corpus of as many "
        "texts from the same source (method chosen by simulation).",
        formula_latex=(
            r"\text{target: } \mathbb{E}\big[\hat\theta_n\big],\qquad "
            r"\hat\theta \pm t_{K-1}\,\widehat{\mathrm{se}}_J,\quad "
            r"\widehat{\mathrm{se}}_J^{2} = \tfrac{K-1}{K}\sum_{k}\big(\hat\theta_{(k)} - \bar\theta_{(\cdot)}\big)^2,\qquad "
            r"d_{95} = \lceil f \rceil:\ \big[g(\hat f - t_{K-1}\,\widehat{\mathrm{se}}_J(f)),\ "
            r"g(\hat f + t_{K-1}\,\widehat{\mathrm{se}}_J(f))\big],\ "
            r"g(\mu) = \mathbb{E}\big\lceil \mathcal{N}\big(\mu, \widehat{\mathrm{se}}_J(f)^2\big)\big\rceil"
        ),
        formula_plain="target: E[θ̂_n], the metric's expected value on a corpus of n texts; "
        "jackknife: θ̂ ± t_{K−1} · se_J, se_J² = (K−1)/K · Σ_k (θ̂_(k) − mean θ̂_(·))², θ̂_(k) the metric without "
        "text (or group) k; d95 = ⌈f⌉, f the fractional d95 (where the cumulative explained variance crosses 0.95, "
        "interpolated between whole components): [g(f̂ − t_{K−1} · se_J(f)), g(f̂ + t_{K−1} · se_J(f))], "
        "g(μ) = E⌈X⌉ for X ~ N(μ, se_J(f)²) = Σ_j Φ((μ − j) / se_J(f)) over the whole numbers j above the bulk",
        definition=(
            "What is estimated: the value this same computation would give, on average, on another corpus of the "
            "same number of texts from the same source (the expectation of the estimator at this corpus size). "
            "Pooled rank-like metrics depend on how many texts and points go in, so this is the quantity two "
            "corpora of equal size can be compared on; it is not the value of an infinitely large corpus. "
            "How: every metric except d95 uses the delete-one-text jackknife — the metric is recomputed with each "
            "text left out (with more texts than resamples, with each of K = resamples groups of texts left out) "
            "and the spread of those values gives a standard error and a t interval around the estimate. d95 is "
            "a whole number, which leaving one text out rarely moves, so its own jackknife fails; its interval "
            "comes from its continuous companion, the fractional d95 f: where the cumulative explained variance "
            "crosses 95 %, interpolated linearly between whole components, so that d95 = ⌈f⌉ exactly. The "
            "jackknife of f gives f ± t · se, an interval for the expectation of f; it is carried to the scale of "
            "d95 by g(μ), the average of ⌈X⌉ when X is normal with mean μ and the jackknife's standard deviation "
            "(g grows with μ, so the carried interval holds the expectation of d95 whenever the first holds that "
            "of f). The displayed estimate is still the whole number d95; the interval's ends are fractions, "
            "because the expectation of a whole number usually lies between two whole numbers. "
            "Bounded metrics are clipped to their range (linearity and the top-PC share to [0, 1], the cosine to "
            "[−1, 1], the dimensions to ≥ 1, TwoNN to ≥ 0), and the estimate always lies inside its interval. "
            "The methods were chosen by simulation: synthetic corpora with a planted spectrum, intrinsic "
            "dimension, anisotropy and a planted linear map between two layers, whose target is known by "
            "averaging the estimator over a thousand corpora; over 500 corpora each, the chosen intervals hold "
            "the target in 95–98 % of corpora at 30 and 100 texts for every metric (d95: 97 % at both; table "
            "in the README's Corpus section; bench/bench_intervals.py). Half-sampling of d95 widened by half a "
            "step, used for d95 before, held it in only 86 % at 100 texts, where d95 takes two neighbouring "
            "values across corpora. The plain percentile interval used before held it in 0–17 % for the rank "
            "metrics and linearity, because drawing texts with replacement duplicates texts, and duplicated texts "
            "remove directions. Nothing is recomputed from the points: per-text blocks of the Gram and scatter "
            "matrices built once per layer make each resample a weighted sum of blocks (cosine exact; spectra "
            "exact in the top bootstrap_rank principal directions; TwoNN reuses each point's stored neighbours)."
        ),
        high="A wide interval: the metric depends strongly on which texts are in the corpus; add texts.",
        low="A narrow interval: another corpus of the same size from the same source would give nearly the same value.",
        encoder_vs_decoder="Same procedure for every model family.",
        pitfalls=[
            P_PAIRS_NEED_TEXTS,
            "With about 10 texts the linearity interval held its target in only 80 % of simulated corpora (few "
            "points per hidden dimension make linearity close to 1 by construction); the other metrics held "
            "theirs in 95–98 %. Use 30 texts or more for intervals you want to rely on.",
            "d95 is a whole number, but its interval is for its average over corpora of this size, which "
            "usually lies between two whole numbers: an interval such as [25.6, 27.3] around d95 = 26 is a range "
            "for that average, not for the whole number one other corpus would give.",
            "The interval covers the variation across texts of this kind only; it says nothing about other "
            "corpora, and nothing about the sampling of tokens within texts (max_points).",
        ],
        references=[R_EFRON, R_SHAO_TU],
        sources=["core.studies.geometry:pooled_geometry", "core.studies.intervals:interval"],
    ),
]

ENTRIES: list[DocEntry] = [*_CORPUS]
