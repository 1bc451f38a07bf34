"""Session-state keys in one place, and the one function that sets their defaults.

Pages and the sidebar read and write `st.session_state[Keys.X]`; no other module invents keys. Widget keys are
listed here too, so a test can set a widget's value through session state by the same name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from core.models import BUNDLED_ID


class Keys:
    # --- the model and the text (widgets) ---------------------------------------------------------------------
    MODEL_CHOICE = "model_choice"  # selectbox: a preset id or OTHER_MODEL
    MODEL_CUSTOM = "model_custom"  # text input: any hub id or local folder
    TEXT = "text"  # text area; never cleared by the app
    MAX_TOKENS = "max_tokens"
    DTYPE = "dtype"
    EXCLUDE_SPECIAL = "exclude_special"
    COMPUTE_GRADIENTS = "compute_gradients"
    INTEGRATED_GRADIENTS = "integrated_gradients"
    IG_STEPS = "ig_steps"
    LENS_FULL_GRID = "lens_full_grid"
    ANIMATIONS = "animations"
    MASK_WORD = "mask_word"  # selectbox of the text's words, for masked LMs without a mask token

    # --- results and errors ------------------------------------------------------------------------------------
    RESULT = "result"  # the last finished AnalysisResult (kept on later errors)
    RESULT_LOAD = "result_load"  # (model_id, dtype, device) the result's model was loaded with (for generation)
    ERROR = "error"  # {"kind": "unavailable"|"input"|"internal", "message": str, "model": str} or None
    SESSION_LOG = "session_log"  # list of dicts, one per analysis of this session (for the export's HTML log)
    PENDING_ANALYSIS = "pending_analysis"  # set by callbacks (e.g. "switch to bundled") to run once
    EXPORT_HIDDEN = "export_hidden"  # toggle: hidden_states.npz in the export
    URL_READ = "url_read"  # the URL's query parameters were read into the widgets once

    # --- layer analysis page (widgets) ---------------------------------------------------------------------------
    LAYER = "layer"
    HEAD = "head"
    CORR_METHOD = "corr_method"
    ATTR_METHOD = "attr_method"
    ATT_WINDOW = "att_window"  # first position of the attention-heatmap window (long texts)

    # --- continuation (chat) -------------------------------------------------------------------------------------
    GEN_TEXT = "gen_text"  # the last generated continuation (kept after a stop)
    GEN_STOP = "gen_stop"  # threading.Event of the running generation
    GEN_MAX_NEW = "gen_max_new"  # widgets of the continuation expander
    GEN_MODE = "gen_mode"
    GEN_SEED = "gen_seed"
    GEN_TEMPERATURE = "gen_temperature"
    GEN_TOP_P = "gen_top_p"
    GEN_CHAT = "gen_chat"


#: Choice in the model selectbox that reveals the free field.
OTHER_MODEL = "Other: a Hugging Face id or a local folder"

_DEFAULTS: dict[str, Any] = {
    Keys.MODEL_CHOICE: BUNDLED_ID,
    Keys.MODEL_CUSTOM: "",
    Keys.MAX_TOKENS: 128,
    Keys.DTYPE: "auto",
    Keys.EXCLUDE_SPECIAL: False,
    Keys.COMPUTE_GRADIENTS: True,
    Keys.INTEGRATED_GRADIENTS: False,
    Keys.IG_STEPS: 32,
    Keys.LENS_FULL_GRID: False,
    Keys.ANIMATIONS: True,
    Keys.MASK_WORD: None,
    Keys.RESULT: None,
    Keys.RESULT_LOAD: None,
    Keys.ERROR: None,
    Keys.PENDING_ANALYSIS: None,
    Keys.URL_READ: False,
    Keys.EXPORT_HIDDEN: False,
    Keys.CORR_METHOD: "pearson",
    Keys.GEN_TEXT: "",
    Keys.GEN_STOP: None,
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
