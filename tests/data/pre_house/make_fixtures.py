"""How the fixtures beside this file were made: run once with the code of commit abac59e (core/ still flat, before
the layer packages), from the repository root: `python tests/data/pre_house/make_fixtures.py`. Kept as a record; it
imports the old module paths and does not run on later code. tests/test_stored_results.py reads the files back."""

import os
import sys
import tempfile

sys.path[:0] = [".", "tests"]

import torch  # noqa: E402
from tiny_models import build_tiny  # noqa: E402

from core.analysis import analyze  # noqa: E402
from core.corpus import CorpusSettings, analyze_corpus  # noqa: E402
from core.models import load_model  # noqa: E402
from core.patching import run_patching  # noqa: E402

torch.manual_seed(0)
out = "tests/data/pre_house/"
d = tempfile.mkdtemp()
g = load_model(str(build_tiny("gpt2", d + "/g")), dtype="float32", device="cpu")
r = analyze(g, "The cat sat on the mat.", views="all")
open(out + "analysis_gpt2.bin", "wb").write(r.to_bytes())
texts = [
    "The cat sat on the mat.",
    "The dog sat on the log.",
    "A bird flew over the house.",
    "Paris is the capital of France.",
]
c = analyze_corpus(g, texts, CorpusSettings(bootstrap=20))
open(out + "corpus_gpt2.bin", "wb").write(c.to_bytes())
p = run_patching(g, "The dog sat on the log", "The log sat on the dog")
open(out + "patching_gpt2.bin", "wb").write(p.to_bytes())
for f in sorted(os.listdir(out)):
    print(f, os.path.getsize(out + f))
