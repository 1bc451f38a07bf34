"""Patching over a data set of prompt pairs and attribution patching (core/studies/pairs.py), the Student-t interval
of the mean (core/studies/intervals.py), and `python -m core patch --pairs`.

The references are written here, independently of core: exact patching with plain torch forward pre-hooks on
GPT-2's blocks, and first-order attribution patching from `output_hidden_states` / module outputs with
`retain_grad` on a run whose input embeddings require a gradient."""

from __future__ import annotations

import csv
import io
import json
import random
import zipfile

import numpy as np
import pytest
import torch

from core.infra.errors import InputError
from core.studies.intervals import mean_interval
from core.studies.pairs import Pair, PairsResult, PairsSettings, parse_pairs, patch_pairs, run_pairs
from core.studies.patching import COMPONENTS, run_patching

WORDS = ["dog", "cat", "log", "mat", "bird", "tree", "man", "sun", "car", "road", "house", "fish"]


def hidden_pairs(tokenizer, n: int, seed: int) -> list[Pair]:
    """n templated pairs of one token length, drawn with a seed the code under test never sees."""
    texts = [f"The {a} sat on the {b}" for a in WORDS for b in WORDS if a != b]
    by_len: dict[int, list[str]] = {}
    for t in texts:
        by_len.setdefault(len(tokenizer(t)["input_ids"]), []).append(t)
    group = max(by_len.values(), key=len)
    rng = random.Random(seed)
    return [Pair(*rng.sample(group, 2)) for _ in range(n)]


@pytest.fixture(scope="module")
def data(tiny_gpt2):
    pairs = hidden_pairs(tiny_gpt2.tokenizer, 7, seed=1234)
    return pairs, run_pairs(tiny_gpt2, pairs)


def _blocks(model):
    return model.transformer.h


def _hand_residual(loaded, pair: Pair, a: int, b: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(m_clean, m_corrupted, m [L, T] with block l's input at position p taken from the clean run, m [L] with
    every position taken) from plain forward pre-hooks."""
    model, tok = loaded.model, loaded.tokenizer
    clean = tok(pair.clean, return_tensors="pt")
    corrupt = tok(pair.corrupt, return_tensors="pt")
    with torch.no_grad():
        out_c = model(**clean, output_hidden_states=True)
        lg_k = model(**corrupt).logits[0, -1]
    m_c = float(out_c.logits[0, -1, a] - out_c.logits[0, -1, b])
    m_k = float(lg_k[a] - lg_k[b])
    L, T = len(_blocks(model)), clean["input_ids"].shape[1]
    grid, every = np.zeros((L, T)), np.zeros(L)
    for l in range(L):
        hs = out_c.hidden_states[l]
        for p in [*range(T), -1]:

            def hook(_m, args, kwargs, hs=hs, p=p):
                h = (args[0] if args else kwargs["hidden_states"]).clone()
                if p < 0:
                    h[:] = hs
                else:
                    h[:, p] = hs[:, p]
                return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

            handle = _blocks(model)[l].register_forward_pre_hook(hook, with_kwargs=True)
            try:
                with torch.no_grad():
                    lg = model(**corrupt).logits[0, -1]
            finally:
                handle.remove()
            v = float(lg[a] - lg[b])
            if p < 0:
                every[l] = v
            else:
                grid[l, p] = v
    return m_c, m_k, grid, every


def _hand_atp(loaded, pair: Pair, a: int, b: int) -> dict[str, np.ndarray]:
    """First-order attribution patching written independently: {component: [L, T] of (a_clean − a_corrupted) ·
    ∂m/∂a}, gradients by retain_grad on a corrupted run whose input embeddings require a gradient."""
    model, tok = loaded.model, loaded.tokenizer
    blocks = _blocks(model)

    def run(text: str, grad: bool):
        ids = tok(text, return_tensors="pt")["input_ids"]
        emb = model.transformer.wte(ids).detach().requires_grad_(grad)
        outs: dict[str, list[torch.Tensor]] = {"attention": [], "mlp": []}

        def keep(kind):
            def hook(_m, _a, out):
                o = out[0] if isinstance(out, tuple) else out
                if grad:
                    o.retain_grad()
                outs[kind].append(o)

            return hook

        hs = [blk.attn.register_forward_hook(keep("attention")) for blk in blocks]
        hs += [blk.mlp.register_forward_hook(keep("mlp")) for blk in blocks]
        try:
            with torch.enable_grad():
                out = model(inputs_embeds=emb, output_hidden_states=True)
        finally:
            for h in hs:
                h.remove()
        res = list(out.hidden_states[: len(blocks)])
        if grad:
            for h in res:
                h.retain_grad()
            m = out.logits[0, -1, a] - out.logits[0, -1, b]
            m.backward()
        return {"residual": res, **outs}

    clean, corrupt = run(pair.clean, False), run(pair.corrupt, True)
    return {
        c: np.stack(
            [((x_c - x_k) * x_k.grad)[0].sum(-1).detach().double().numpy() for x_c, x_k in zip(clean[c], corrupt[c])]
        )
        for c in COMPONENTS
    }


def test_residual_restored_is_the_mean_over_pairs_of_plain_hooks(data, tiny_gpt2):
    pairs, res = data
    assert len(res.pairs) == 7 and not res.near_ties
    fracs, fracs_all = [], []
    for pair, rec in zip(pairs, res.pairs, strict=True):
        m_c, m_k, grid, every = _hand_residual(tiny_gpt2, pair, rec.answer_id, rec.wrong_id)
        assert rec.m_clean == pytest.approx(m_c, abs=1e-4) and rec.m_corrupted == pytest.approx(m_k, abs=1e-4)
        fracs.append((grid - m_k) / (m_c - m_k))
        fracs_all.append((every - m_k) / (m_c - m_k))
    want, want_all = np.mean(fracs, axis=0), np.mean(fracs_all, axis=0)
    rows = {(l - 1, p): r for l, p, c, *r in res.rows() if c == "residual"}  # rows number blocks 1…L
    got = np.array([[rows[(l, p)][0] for p in range(res.n_tokens)] for l in range(res.n_layers)])
    got_all = np.array([rows[(l, -1)][0] for l in range(res.n_layers)])
    np.testing.assert_allclose(got, want, atol=1e-3)
    np.testing.assert_allclose(got_all, want_all, atol=1e-3)
    assert np.ptp(want[:, :-1]) > 1e-3  # the cells differ (otherwise the comparison could not fail)
    assert all(rows[k][1] == 7 for k in rows)


def test_atp_equals_first_order_attribution_patching(data, tiny_gpt2):
    pairs, res = data
    want = {c: [] for c in COMPONENTS}
    for pair, rec in zip(pairs, res.pairs, strict=True):
        d = _hand_atp(tiny_gpt2, pair, rec.answer_id, rec.wrong_id)
        for c in COMPONENTS:
            want[c].append(d[c] / (rec.m_clean - rec.m_corrupted))
    rows = {(l - 1, p, c): r[-1] for l, p, c, *r in res.rows()}  # rows number blocks 1…L
    for c in COMPONENTS:
        mean = np.mean(want[c], axis=0)
        got = np.array([[rows[(l, p, c)] for p in range(res.n_tokens)] for l in range(res.n_layers)])
        np.testing.assert_allclose(got, mean, atol=1e-3)
        got_all = np.array([rows[(l, -1, c)] for l in range(res.n_layers)])
        np.testing.assert_allclose(got_all, mean.sum(axis=1), atol=1e-3)  # the "all positions" row is the sum
        assert np.abs(mean).max() > 1e-3


def test_every_mean_is_inside_its_interval(data):
    _, res = data
    rows = res.rows()
    widths = []
    for _l, _p, _c, restored, n, low, high, _atp in rows:
        assert n == 7
        assert low - 1e-12 <= restored <= high + 1e-12
        widths.append(high - low)
    assert max(widths) > 1e-3  # not all degenerate


def test_exact_and_atp_agree_where_they_should(data):
    _, res = data
    # block 0's residual at every position restores exactly 1 for every pair (the whole input is clean)
    np.testing.assert_allclose(res.restored_pairs("residual", every=True)[:, 0], 1.0, atol=1e-4)
    assert -1.0 <= res.correlation() <= 1.0


def test_top_k_patches_the_largest_atp_sites_exactly(data, tiny_gpt2):
    pairs, full = data
    top = run_pairs(tiny_gpt2, pairs, PairsSettings(top_k=4))
    assert len(top.top_sites) == 4
    atp = {(c, l - 1, p): abs(a) for l, p, c, *_r, a in full.rows()}  # top_sites hold array indices
    chosen = [atp[s] for s in top.top_sites]
    others = [v for s, v in atp.items() if s not in top.top_sites]
    assert min(chosen) >= max(others)
    for c, l, p in top.top_sites:
        got = top.metric_all[c][:, l] if p < 0 else top.metric[c][:, l, p]
        want = full.metric_all[c][:, l] if p < 0 else full.metric[c][:, l, p]
        np.testing.assert_allclose(got, want, atol=1e-4)
    n_exact = sum(int(np.isfinite(top.metric[c]).sum() + np.isfinite(top.metric_all[c]).sum()) for c in COMPONENTS)
    assert n_exact == 4 * len(pairs)
    for c in COMPONENTS:
        np.testing.assert_allclose(top.delta[c], full.delta[c], atol=1e-6)


def test_atp_only_runs_no_exact_grid(data, tiny_gpt2):
    pairs, full = data
    res = run_pairs(tiny_gpt2, pairs[:3], PairsSettings(atp_only=True))
    for c in COMPONENTS:
        assert np.isnan(res.metric[c]).all()
        np.testing.assert_allclose(res.delta[c], full.delta[c][:3], atol=1e-6)
    assert [(r.answer_id, r.wrong_id) for r in res.pairs] == [(r.answer_id, r.wrong_id) for r in full.pairs[:3]]


def test_one_pair_is_the_one_pair_run(tiny_gpt2, data):
    pairs, _ = data
    res = run_pairs(tiny_gpt2, pairs[:1])
    one = run_patching(tiny_gpt2, pairs[0].clean, pairs[0].corrupt)
    rows = {(l, p, c): r for l, p, c, *r in res.rows()}
    for l, p, c, restored, _metric in one.rows():
        r = rows[(l, p, c)]
        assert r[0] == pytest.approx(restored, abs=1e-9) and r[1] == 1
        assert np.isnan(r[2]) and np.isnan(r[3])  # no interval from one pair


def test_near_ties_are_counted_listed_and_left_out(tiny_gpt2, data):
    pairs, full = data
    tie = Pair(pairs[0].clean, pairs[0].clean, answer=full.pairs[0].answer_token, wrong=full.pairs[0].wrong_token)
    fast = PairsSettings(atp_only=True)
    res = run_pairs(tiny_gpt2, [*pairs[:3], tie], fast)
    assert [r.index for r in res.near_ties] == [4]
    assert res.used.tolist() == [True, True, True, False]
    assert res.summary()["near_ties"]["count"] == 1 and "pair 4" in res.warnings[0]
    base = run_pairs(tiny_gpt2, pairs[:3], fast)
    np.testing.assert_allclose([r[7] for r in res.rows()], [r[7] for r in base.rows()], atol=1e-9)
    with pytest.raises(InputError, match="every one of the 2 pairs is a near tie"):
        run_pairs(tiny_gpt2, [tie, tie], fast)
    # both runs predicting the same token: in a data set a near tie (m ≡ 0), alone the one-pair error
    same = Pair(pairs[1].clean, pairs[1].clean)
    res = run_pairs(tiny_gpt2, [pairs[0], same], fast)
    assert [r.index for r in res.near_ties] == [2] and res.pairs[1].answer_id == res.pairs[1].wrong_id
    with pytest.raises(InputError, match="pair 1: the answer and the wrong answer are the same token"):
        run_pairs(tiny_gpt2, [same], fast)
    # with the exact grid, the tie's cells are in patching_pairs but not in the means (n_pairs counts the others)
    exact = run_pairs(tiny_gpt2, [pairs[0], tie])
    assert {r[4] for r in exact.rows()} == {1} and {r[0] for r in exact.pair_rows()} == {1, 2}


def test_lengths_are_checked_with_one_line(tiny_gpt2, data):
    pairs, _ = data
    with pytest.raises(InputError) as exc:
        run_pairs(tiny_gpt2, [*pairs[:3], Pair("The dog sat", "The dog sat")])
    msg = str(exc.value)
    n = len(tiny_gpt2.tokenizer(pairs[0].clean)["input_ids"])
    assert "\n" not in msg and f"{n} tokens (3 pairs)" in msg and "(1 pair)" in msg
    with pytest.raises(InputError, match="pair 2: the texts have different token lengths"):
        run_pairs(tiny_gpt2, [pairs[0], Pair("The dog sat on the log", "The dog sat")])


def test_result_round_trips_and_is_cached(tiny_gpt2, data, tmp_path):
    from core.run.cache import ResultCache

    pairs, _ = data
    cache = ResultCache(tmp_path / "c")
    try:
        first = patch_pairs(tiny_gpt2, pairs[:2], PairsSettings(top_k=2), cache=cache)
        again = patch_pairs(tiny_gpt2, pairs[:2], PairsSettings(top_k=2), cache=cache)
    finally:
        cache.close()
    assert not first.cache_hit and again.cache_hit and again.top_sites == first.top_sites
    back = PairsResult.from_bytes(first.to_bytes())
    assert back.pairs == first.pairs and back.top_sites == first.top_sites
    for c in COMPONENTS:
        np.testing.assert_array_equal(back.delta[c], first.delta[c])


# ----------------------------------------------------------------------------------------------------------------
# Reading a data set


def test_parse_pairs_reads_csv_and_jsonl_with_named_columns():
    text = "id,a,b,ans\n1,The dog,The cat,x\n2,A b,C d,\n"
    pairs = parse_pairs(text.encode(), "p.csv", clean_column="a", corrupt_column="b", answer_column="ans")
    assert pairs == [Pair("The dog", "The cat", "x", None), Pair("A b", "C d", None, None)]
    jl = '{"clean": "x y", "corrupt": "z w", "wrong": "q"}\n\n{"clean": "a", "corrupt": "b"}\n'
    assert parse_pairs(jl.encode(), "p.jsonl", wrong_column="wrong") == [Pair("x y", "z w", None, "q"), Pair("a", "b")]


@pytest.mark.parametrize(
    "data, name, kw, expect",
    [
        (b"clean,corrupt\n", "p.csv", {}, "holds no pairs"),
        (b"x,corrupt\na,b\n", "p.csv", {}, "no column 'clean' (columns: x, corrupt); name it with --clean-column"),
        (b"clean,corrupt\na,\n", "p.csv", {}, "line 2: the corrupt text"),
        (b'{"clean": "a", "corrupt": "b"}\nnot json\n', "p.jsonl", {}, "line 2 is not JSON"),
        (b'["a", "b"]\n', "p.jsonl", {}, "line 1 is not a JSON object"),
        (b'{"clean": 1, "corrupt": "b"}\n', "p.jsonl", {}, "the clean text ('clean') is empty or not text"),
        (b"a,b\n", "p.txt", {}, "must end in .csv or .jsonl"),
        (b"\xff\xfe", "p.csv", {}, "not UTF-8"),
    ],
)
def test_parse_pairs_bad_input_is_one_line(data, name, kw, expect):
    with pytest.raises(InputError) as exc:
        parse_pairs(data, name, **kw)
    assert expect in str(exc.value) and "\n" not in str(exc.value)


def test_settings_are_checked():
    with pytest.raises(InputError, match="give one of them"):
        PairsSettings(atp_only=True, top_k=3)
    with pytest.raises(InputError, match="positive integer"):
        PairsSettings(top_k=0)


# ----------------------------------------------------------------------------------------------------------------
# The interval of the mean, by simulation against a known truth


@pytest.mark.parametrize("n", [5, 30])
def test_mean_interval_covers_the_true_mean_at_its_level(n):
    rng = np.random.default_rng(7)
    reps, truth = 4000, 2.5
    x = rng.normal(truth, 3.0, size=(n, reps))
    mean, low, high = mean_interval(x, level=0.95, axis=0)
    np.testing.assert_allclose(mean, x.mean(axis=0))
    coverage = float(((low <= truth) & (truth <= high)).mean())
    assert abs(coverage - 0.95) < 4 * np.sqrt(0.95 * 0.05 / reps)  # t is exact for normal data
    mean90, low90, high90 = mean_interval(x, level=0.90, axis=0)
    assert np.all(high90 - low90 < high - low)


def test_mean_interval_matches_the_textbook_formula_and_handles_few_values():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    mean, low, high = mean_interval(x)
    half = 3.182446305284263 * x.std(ddof=1) / 2  # t_{0.975, 3}
    assert mean == pytest.approx(3.5) and low == pytest.approx(3.5 - half) and high == pytest.approx(3.5 + half)
    m1, l1, h1 = mean_interval(np.array([[3.0, np.nan], [np.nan, np.nan]]), axis=0)
    assert m1[0] == 3.0 and np.isnan(l1[0]) and np.isnan(h1[0]) and np.isnan(m1[1])


# ----------------------------------------------------------------------------------------------------------------
# CLI


def _write_pairs(path, pairs, fmt):
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "src", "dst"])
        w.writerows([i, p.clean, p.corrupt] for i, p in enumerate(pairs))
        path.write_text(buf.getvalue(), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"src": p.clean, "dst": p.corrupt}) + "\n" for p in pairs))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_cli_patch_pairs_writes_the_bundle(tiny_dirs, tiny_gpt2, data, tmp_path, capsys, fmt):
    from core.cli.main import main

    pairs, full = data
    src = tmp_path / f"pairs.{fmt}"
    _write_pairs(src, pairs[:3], fmt)
    out = tmp_path / "p.zip"
    argv = ["patch", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(src), "--clean-column", "src"]
    rc = main([*argv, "--corrupt-column", "dst", "--out", str(out), "--no-cache"])
    assert rc == 0, capsys.readouterr().err
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        rows = list(csv.DictReader(io.StringIO(zf.read("patching.csv").decode())))
        header = zf.read("patching.csv").decode().splitlines()[0].split(",")
        cells = list(csv.DictReader(io.StringIO(zf.read("patching_pairs.csv").decode())))
        summary = json.loads(zf.read("patching.json"))
        pdf = zf.read("report.pdf")
    from pypdf import PdfReader

    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "Attribution patching (AtP)" in text and "Patching over a data set of pairs" in text
    assert header[:8] == ["layer", "position", "component", "restored", "n_pairs", "ci_low", "ci_high", "atp"]
    assert {"manifest.json", "patching_pairs.csv", "plots/pairs_residual.png", "plots/pairs_exact_vs_atp.png"} <= names
    assert {r["n_pairs"] for r in rows} == {"3"}
    assert len(cells) == 3 * len(rows) and {c["pair"] for c in cells} == {"1", "2", "3"}
    # the bundle's means are the means of its per-pair cells
    key = ("1", "2", "residual")
    per = [float(c["restored"]) for c in cells if (c["layer"], c["position"], c["component"]) == key]
    row = next(r for r in rows if (r["layer"], r["position"], r["component"]) == key)
    assert float(row["restored"]) == pytest.approx(np.mean(per), abs=1e-6)
    assert summary["n_pairs"] == 3 and summary["near_ties"]["count"] == 0


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--clean", "a b"], "either --pairs FILE or --clean and --corrupt"),
        (["--atp-only", "--top", "3"], "give one of them"),
        (["--clean-column", "nope"], "no column 'nope'"),
    ],
)
def test_cli_patch_pairs_bad_input_is_one_line_and_exit_2(tiny_dirs, data, tmp_path, capsys, extra, expect):
    from core.cli.main import main

    pairs, _ = data
    src = tmp_path / "pairs.csv"
    _write_pairs(src, pairs[:2], "csv")
    argv = ["patch", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(src), "--clean-column", "src"]
    argv += ["--corrupt-column", "dst", *extra, "--out", str(tmp_path / "o"), "--no-cache"]
    rc = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and expect in err[0], err


def test_cli_patch_pairs_unequal_lengths_name_the_lengths(tiny_dirs, data, tmp_path, capsys):
    from core.cli.main import main

    pairs, _ = data
    src = tmp_path / "pairs.csv"
    _write_pairs(src, [*pairs[:2], Pair("The dog sat", "The dog sat")], "csv")
    argv = ["patch", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(src), "--clean-column", "src"]
    rc = main([*argv, "--corrupt-column", "dst", "--out", str(tmp_path / "o"), "--no-cache"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert rc == 2 and len(err) == 1 and "different token lengths" in err[0] and "(2 pairs)" in err[0], err
