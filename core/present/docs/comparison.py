"""The comparison of two runs (core/studies/compare.py): linear CKA and its debiased twin.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e

R_KORNBLITH = "Kornblith, S. et al. (2019). Similarity of neural network representations revisited."
R_SONG = "Song, L. et al. (2012). Feature selection via dependence maximization (unbiased HSIC estimator)."
R_NGUYEN = (
    "Nguyen, T., Raghu, M. & Kornblith, S. (2021). Do wide and deep networks learn the same things? "
    "Uncovering how neural network representations vary with width and depth."
)
R_GRETTON = "Gretton, A. et al. (2005). Measuring statistical dependence with Hilbert-Schmidt norms."
R_DAVARI = "Davari, M. et al. (2023). Reliability of CKA as a similarity measure in deep learning."

_COMPARISON: list[DocEntry] = [
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

ENTRIES: list[DocEntry] = [*_COMPARISON]
