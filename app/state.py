"""Session-state keys in one place, and the one function that sets their defaults.

Pages and the sidebar read and write `st.session_state[Keys.X]`; no other module invents keys. Widget keys are
listed here too, so a test can set a widget's value through session state by the same name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from app.settings_widgets import defaults as settings_defaults
from core.infra.presets import BUNDLED_ID


class Keys:
    # --- the model and the text (widgets) ---------------------------------------------------------------------
    MODEL_CHOICE = "model_choice"  # selectbox: a preset id or OTHER_MODEL
    MODEL_CUSTOM = "model_custom"  # text input: any hub id or local folder
    TEXT = "text"  # text area; never cleared by the app
    # The settings' widgets are keyed by the AnalysisSettings field names (app/settings_widgets.py draws one per
    # field); the constants below name the ones other code reads.
    MAX_TOKENS = "max_tokens"
    DTYPE = "dtype"
    EXCLUDE_SPECIAL = "exclude_special_tokens"
    COMPUTE_GRADIENTS = "compute_gradients"
    INTEGRATED_GRADIENTS = "integrated_gradients"
    IG_STEPS = "ig_steps"
    HEAD_ABLATION = "head_ablation"
    NEURON_K = "neuron_factors"  # number input: NMF factors (0: off)
    NEURON_FIRST = "neuron_first_layer"  # number inputs: the neuron-factor layer range (empty: all layers)
    NEURON_LAST = "neuron_last_layer"
    LENS_FULL_GRID = "lens_full_grid"
    ANIMATIONS = "animations"
    MASK_WORD = "mask_word"  # selectbox of the text's words, for masked LMs without a mask token

    # --- results and errors ------------------------------------------------------------------------------------
    RESULT = "result"  # the last finished AnalysisResult (kept on later errors)
    RESULT_LOAD = "result_load"  # (model_id, dtype, device) the result's model was loaded with (for generation)
    ERROR = "error"  # {"kind": "unavailable"|"input"|"internal", "message": str, "model": str} or None
    SESSION_LOG = "session_log"  # list of dicts, one per analysis of this session (for the export's HTML log)
    PENDING_ANALYSIS = "pending_analysis"  # set by callbacks (e.g. "switch to bundled") to run once
    TIMING_AFTER_RERUN = "timing_after_rerun"  # an analysis's timing line, shown once after the sidebar's redraw
    EXPORT_HIDDEN = "export_hidden"  # toggle: hidden_states.npz in the export
    URL_READ = "url_read"  # the URL's query parameters were read into the widgets once
    VIEWS_FAILED = "views_failed"  # {cache key: message} of results whose deeper views could not be computed
    JOB_SESSION = "job_session"  # this session's id in app.jobs' registry (a random hex string, set once)

    # --- layer analysis page (widgets) ---------------------------------------------------------------------------
    LAYER = "layer"
    HEAD = "head"
    CORR_METHOD = "corr_method"
    ATTR_METHOD = "attr_method"
    ATT_WINDOW = "att_window"  # first position of the attention-heatmap window (long texts)
    ATT_SCALE = "att_scale"  # colour scale of the attention heatmap: "auto" or one of chart_spec.ATTENTION_SCALES
    METRIC_ZOOM = "metric_zoom"  # Overall: toggle "Zoom to data" of the layer-metric charts
    ANIM_HEAD = "anim_head"  # Animations tab: the head of the attention GIF (or the mean over heads)
    LENS_WINDOW = "lens_window"  # first column of the logit-lens grid window (long texts)
    DLA_UPDATE = "dla_update"  # promoted tokens: attention update / MLP update / one head
    DLA_BLOCK = "dla_block"
    DLA_HEAD = "dla_head"
    DLA_POSITION = "dla_position"
    FLOW_POSITION = "flow_position"  # information-flow routes: the chosen token and the edge threshold
    FLOW_THRESHOLD = "flow_threshold"
    FLOW_DOWNLOAD = "flow_download"
    NF_FACTORS = "nf_factors"  # multiselect: neuron factors shown (app/neuron_widgets.py)
    SAE_DIRS = "sae_dirs_text"  # text area: SAE folders, one per line (app/sae_widgets.py → AnalysisSettings.sae_dirs)
    SAE_HOOK = "sae_hook"  # selectbox: the SAE shown on the SAE tab
    SAE_FEATURE = "sae_feature"  # selectbox: the feature that shades the token strip
    SAE_TOKEN = "sae_token"  # selectbox: the token whose features are listed
    QK_QUERY = "qk_query"  # selectbox: query position of the query–key view (app/neuron_widgets.py)
    QK_LAYER = "qk_layer"  # the query–key view's own layer and head pickers (Neurons tab)
    QK_HEAD = "qk_head"

    # --- continuation (chat) -------------------------------------------------------------------------------------
    GEN_TEXT = "gen_text"  # the last generated continuation (kept after a stop)
    GEN_STOP = "gen_stop"  # threading.Event of the running generation
    GEN_MAX_NEW = "gen_max_new"  # widgets of the continuation expander
    GEN_MODE = "gen_mode"
    GEN_SEED = "gen_seed"
    GEN_TEMPERATURE = "gen_temperature"
    GEN_TOP_P = "gen_top_p"
    GEN_CHAT = "gen_chat"

    # --- compare page (issue 13): run A and run B, each an ordinary cached analysis -----------------------------
    CMP_MODE = "cmp_mode"  # radio: "text" (B = A's model, a second text) or "model" (B = A's text, a second model)
    CMP_MODEL_A = "cmp_model_a"  # selectbox: a preset id or OTHER_MODEL
    CMP_CUSTOM_A = "cmp_custom_a"
    CMP_TEXT_A = "cmp_text_a"
    CMP_MODEL_B = "cmp_model_b"
    CMP_CUSTOM_B = "cmp_custom_b"
    CMP_TEXT_B = "cmp_text_b"
    CMP_RESULT_A = "cmp_result_a"  # AnalysisResult of run A (None before the first comparison)
    CMP_RESULT_B = "cmp_result_b"
    CMP_SPEC_A = "cmp_spec_a"  # (model id, text, settings, dtype) that made CMP_RESULT_A (reuse without loading)
    CMP_SPEC_B = "cmp_spec_b"
    CMP_ATTR_METHOD = "cmp_attr_method"
    CMP_ERROR = "cmp_error"  # one line for the page, or None
    CMP_ZIP = "cmp_zip"  # app.downloads.OnceBytes of the shown comparison's ZIP (built on the first click)
    CMP_AXIS = "cmp_axis"  # toggle: absolute layers instead of relative depth
    CMP_DEBIASED = "cmp_debiased"  # toggle: debiased CKA
    CMP_ENTROPY = "cmp_entropy"  # "entropy" or "normalized_entropy" for the difference heatmap
    LAYER_CKA_DEBIASED = "layer_cka_debiased"  # Layer Analysis page: debiased layer × layer CKA
    URL_PAGE = "url_page"  # ?page=… of a shared link, switched to once

    # --- causal page (activation patching) --------------------------------------------------------------------
    PATCH_CLEAN = "patch_clean"  # text areas
    PATCH_CORRUPT = "patch_corrupt"
    PATCH_ANSWER = "patch_answer"  # optional answer tokens
    PATCH_WRONG = "patch_wrong"
    PATCH_RUN = "patch_run"  # the Run button
    PATCH_COMPONENT = "patch_component"  # radio: which component's heatmap
    PATCH_RESULT = "patch_result"  # the last core.studies.patching.PatchingResult
    PATCH_ERROR = "patch_error"  # its error message, or None
    PATCH_FAMILY = "patch_family"  # the family the example texts were filled in for
    PATCH_ZIP = "patch_zip"  # app.downloads.OnceBytes of the shown patching result's ZIP
    SAE_PATCH_DIR = "sae_patch_dir"  # selectbox: the SAE folder whose feature is patched (app/sae_patch_widgets.py)
    SAE_PATCH_FEATURE = "sae_patch_feature"  # number input: the feature
    SAE_PATCH_RUN = "sae_patch_run"  # the Run button
    SAE_PATCH_RESULT = "sae_patch_result"  # the last core.studies.sae_patching.SAEPatchingResult
    SAE_PATCH_ERROR = "sae_patch_error"  # its error message, or None
    SAE_PATCH_ZIP = "sae_patch_zip"  # app.downloads.OnceBytes of the shown SAE patching result's ZIP

    # --- corpus page -------------------------------------------------------------------------------------------
    CORPUS_RESULT = "corpus_result"  # the last finished core.studies.corpus.CorpusResult
    CORPUS_ERROR = "corpus_error"  # user-facing message of the last failed corpus run, or None
    CORPUS_ENGINE = "corpus_engine"  # where the last corpus result was computed (app.cluster.Engine.label)
    CORPUS_ZIP = "corpus_zip"  # app.downloads.OnceBytes of the shown result's ZIP (built on the first click)
    CORPUS_SOURCE = "corpus_source"  # radio: upload .txt / upload .csv / paste lines
    CORPUS_FILE = "corpus_file"  # (name, bytes) of the last uploaded file (an uploader forgets it on navigation)
    CORPUS_PASTE = "corpus_paste"
    CORPUS_COLUMN = "corpus_column"
    CORPUS_MAX_TOKENS = "corpus_max_tokens"
    CORPUS_BATCH = "corpus_batch"
    CORPUS_BOOTSTRAP = "corpus_bootstrap"
    CORPUS_MAX_POINTS = "corpus_max_points"
    CORPUS_SPECIAL = "corpus_special"
    CORPUS_METRICS = "corpus_metrics"  # multiselect of pooled metrics to plot
    CORPUS_PER_TEXT = "corpus_per_text"  # selectbox: single-text metric shown against the pooled curve
    CORPUS_SAE = "corpus_sae"  # the last run's core.studies.sae_corpus results (one per sidebar SAE), or None
    CORPUS_SAE_TOP = "corpus_sae_top"  # number input: examples kept per SAE feature
    CORPUS_SAE_HOOK = "corpus_sae_hook"  # selectbox: the SAE (hook) shown (app/sae_corpus_widgets.py)
    CORPUS_SAE_FEATURE = "corpus_sae_feature"  # selectbox: the feature whose examples are shown


#: Choice in the model selectbox that reveals the free field.
OTHER_MODEL = "Other: a Hugging Face id or a local folder"

_DEFAULTS: dict[str, Any] = {
    Keys.MODEL_CHOICE: BUNDLED_ID,
    Keys.MODEL_CUSTOM: "",
    **settings_defaults(),  # every AnalysisSettings field, by its name
    Keys.DTYPE: "auto",
    Keys.SAE_DIRS: "",
    Keys.ANIMATIONS: True,
    Keys.MASK_WORD: None,
    Keys.RESULT: None,
    Keys.RESULT_LOAD: None,
    Keys.ERROR: None,
    Keys.PENDING_ANALYSIS: None,
    Keys.TIMING_AFTER_RERUN: None,
    Keys.URL_READ: False,
    Keys.VIEWS_FAILED: {},
    Keys.EXPORT_HIDDEN: False,
    Keys.CORR_METHOD: "pearson",
    Keys.METRIC_ZOOM: False,
    Keys.GEN_TEXT: "",
    Keys.GEN_STOP: None,
    Keys.CMP_RESULT_A: None,
    Keys.CMP_RESULT_B: None,
    Keys.CMP_ERROR: None,
}


#: Read-only: no session can change the defaults another session starts from.
DEFAULTS: Mapping[str, Any] = MappingProxyType(_DEFAULTS)


def init_state(session_state: Any) -> None:
    """Set every key that is missing to its default (never overwrites a value already there).

    Each session gets its own copy of every default (lists are created fresh), so that sessions never share a
    mutable object: a session's settings start from these defaults whatever other sessions do.
    """
    for key, value in DEFAULTS.items():
        if key not in session_state:
            session_state[key] = copy.deepcopy(value)
    if Keys.SESSION_LOG not in session_state:
        session_state[Keys.SESSION_LOG] = []


#: The pages' inputs that must survive a visit to another page. Streamlit forgets a widget's value when a script run
#: does not draw the widget; a value written through the session-state API in the run is kept (keep_inputs).
PAGE_INPUTS = (
    Keys.CORPUS_SOURCE,
    Keys.CORPUS_PASTE,
    Keys.CORPUS_COLUMN,
    Keys.CORPUS_MAX_TOKENS,
    Keys.CORPUS_BATCH,
    Keys.CORPUS_BOOTSTRAP,
    Keys.CORPUS_MAX_POINTS,
    Keys.CORPUS_SPECIAL,
    Keys.CORPUS_METRICS,
    Keys.CORPUS_PER_TEXT,
    Keys.PATCH_CLEAN,
    Keys.PATCH_CORRUPT,
    Keys.PATCH_ANSWER,
    Keys.PATCH_WRONG,
    Keys.PATCH_COMPONENT,
    Keys.SAE_PATCH_DIR,
    Keys.SAE_PATCH_FEATURE,
    Keys.CMP_MODE,
    Keys.CMP_MODEL_A,
    Keys.CMP_CUSTOM_A,
    Keys.CMP_TEXT_A,
    Keys.CMP_MODEL_B,
    Keys.CMP_CUSTOM_B,
    Keys.CMP_TEXT_B,
    Keys.CMP_AXIS,
    Keys.CMP_DEBIASED,
    Keys.CMP_ENTROPY,
    Keys.CMP_ATTR_METHOD,
    Keys.LAYER,
    Keys.HEAD,
)


def keep_inputs(session_state: Any) -> None:
    """Write each page input back to the session (called at the start of every script run, on every page), so the
    value outlives the runs of other pages that do not draw its widget."""
    for key in PAGE_INPUTS:
        if key in session_state:
            session_state[key] = session_state[key]
