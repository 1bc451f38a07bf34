"""`python -m core patch --sae DIR --feature F [--hook NAME]`: one sparse-autoencoder feature as a causal site.

    python -m core patch --model M --clean C --corrupt K --sae DIR --feature F [--hook NAME] --out p.zip

Runs core.studies.sae_patching (the feature and the SAE's error term patched clean → corrupted per position and at
every position, the whole site at every position, the feature and the error ablated in the clean run) and writes
sae_patching.csv (`site,intervention,position,restored,delta_m,m,clean_activation,corrupted_activation,clean_token,
corrupted_token`; position −1 = every position), sae_patching.json, manifest.json, plots/sae_patching.png and
report.pdf (core.export.sae_patching_bundle) to a .zip or a folder. Several
--sae folders: --hook picks one by its hook name. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.common import check_out, fail, print_warnings
from core.export.sae_patching_bundle import sae_patching_files
from core.infra.formats import write_files


def pick_sae(folders: list[str], hook: str | None) -> str:
    """The --sae folder to use: the only one (its hook must be --hook when given), or the one whose hook is --hook."""
    from core.model.sae import load_sae
    from core.model.sites import parse

    if hook is not None:
        parse(hook)  # a malformed name: the one-line list of accepted forms
    saes = [load_sae(f) for f in folders]
    if hook is None:
        if len(saes) > 1:
            fail(f"{len(saes)} --sae folders: name one with --hook ({', '.join(s.hook_name for s in saes)})")
        return folders[0]
    for f, s in zip(folders, saes):
        if s.hook_name == hook:
            return f
    fail(f"no --sae folder reads {hook} (they read {', '.join(s.hook_name for s in saes)})")


def run_sae_patch(args: argparse.Namespace, clean: str, corrupt: str) -> int:
    from core.model.loading import load_model
    from core.model.sae import load_sae
    from core.studies.patching import PatchingSettings
    from core.studies.sae_patching import run_sae_patching

    if not args.sae:
        fail("--feature and --hook need --sae DIR")
    if args.feature is None:
        fail("--sae needs --feature F (the feature to patch and ablate)")
    if args.atp_only or args.top is not None or args.engine != "local":
        fail("--atp-only, --top and --engine apply to a data set of pairs (--pairs FILE)")
    settings = PatchingSettings.from_cli(args)
    out: Path = args.out
    check_out(out)
    sae = load_sae(pick_sae(list(args.sae), args.hook))
    if not 0 <= args.feature < sae.d_sae:
        fail(f"feature {args.feature} is out of range: SAE '{sae.name}' has features 0…{sae.d_sae - 1}")
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    result = run_sae_patching(loaded, clean, corrupt, sae, args.feature, settings)
    path = write_files(sae_patching_files(result), out)
    if not args.quiet:
        sys.stdout.write(
            f"wrote {path} ({result.hook_name} feature {result.feature}: answer {result.answer_token!r} vs "
            f"{result.wrong_token!r}; restored at every position: feature "
            f"{result.restored(result.feature_patch_all):.3f}, error {result.restored(result.error_patch_all):.3f}, "
            f"whole site {result.restored(result.site_patch_all):.3f}; "
            f"ablation Δm {result.feature_ablation_all:+.3f})\n"
        )
        print_warnings(list(result.warnings))
    return 0
