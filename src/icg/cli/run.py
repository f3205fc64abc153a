"""Top-level commands: `icg generate`, `icg evaluate`, `icg demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icg.config import DEFAULT_BASE, DEFAULT_GUIDANCE, DEFAULT_MLLM, DEFAULT_STEPS


def generate(
    adapter: Annotated[
        Path, typer.Option("--adapter", help="ICG run (RUN/icg) or adapter folder.")
    ],
    data: Annotated[Path, typer.Option("--data", help="Platform data folder (items, users).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: PNGs + manifest.parquet.")],
    pairs: Annotated[
        Path | None, typer.Option("--pairs", help="Parquet with user_id, item_id columns.")
    ] = None,
    users: Annotated[int, typer.Option("--users", help="Without --pairs: this many users.")] = 4,
    items: Annotated[int, typer.Option("--items", help="Without --pairs: this many items.")] = 4,
    segments: Annotated[
        int | None, typer.Option("--segments", help="Generate per (user segment, item).")
    ] = None,
    preference: Annotated[
        Path | None,
        typer.Option(
            "--preference", help="Pick among segments / candidates with this preference model."
        ),
    ] = None,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates",
            help="Best-of-K: draw K covers per pair and keep the best under the run's reward "
            "(or --preference).",
        ),
    ] = 1,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps.")] = DEFAULT_STEPS,
    guidance: Annotated[
        float, typer.Option("--guidance", help="Classifier-free guidance.")
    ] = DEFAULT_GUIDANCE,
    strength: Annotated[
        float, typer.Option("--strength", help="< 1: start from the reference cover (img2img).")
    ] = 1.0,
    user_guidance: Annotated[
        float,
        typer.Option(
            "--user-guidance",
            min=0.0,
            help="User guidance w_u: 1 plain personalized draw, 0 no user, > 1 more personal.",
        ),
    ] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    method: Annotated[str, typer.Option("--method", help="Name recorded in the manifest.")] = "icg",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the contents of a non-empty --out.")
    ] = False,
) -> None:
    """Generate personalized covers for (user, item) pairs with a trained ICG adapter."""
    from icg.data import load_dataset
    from icg.data.rejects import save_rejects
    from icg.evaluation.pairs import check_pairs, choose_pairs, read_pairs
    from icg.generation import generate_covers, generation_scorer
    from icg.io import undo_on_disk_full
    from icg.models.paths import resolve_adapter_dir
    from icg.pipeline import ICGPipeline
    from icg.safety import check_name, prepare_output

    try:  # everything the user named is checked before anything is written or loaded
        check_name(method, "--method")
        frame = read_pairs(pairs) if pairs is not None else None
        dataset = load_dataset(data)
        if frame is None:
            frame = choose_pairs(dataset, n_users=users, n_items=items, seed=seed)
        check_pairs(frame, dataset)
        prepare_output(
            out, kind="generate", overwrite=overwrite, inputs=[data],
            replace=["manifest.parquet"],
        )  # fmt: skip
        save_rejects(dataset, out / "rejects")
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    try:
        scorer = generation_scorer(adapter, dataset, preference=preference, candidates=candidates)
    except FileNotFoundError as err:
        raise typer.BadParameter(f"--candidates needs --adapter RUN/icg: {err}") from err
    pipe = ICGPipeline.from_pretrained(resolve_adapter_dir(adapter))
    with undo_on_disk_full(out, "icg generate"):  # no cover left without its manifest
        manifest = generate_covers(
            pipe, dataset, frame, out, method=method, seed=seed, num_inference_steps=steps,
            guidance_scale=guidance, batch_size=batch_size, segments=segments, scorer=scorer,
            strength=strength, candidates=candidates, user_guidance=user_guidance,
        )  # fmt: skip
    typer.echo(f"{len(manifest)} covers: {out / 'manifest.parquet'}")


def evaluate(
    data: Annotated[Path, typer.Option("--data", help="Platform data folder.")],
    run: Annotated[Path, typer.Option("--run", help="Run folder (preference/, icg/, icg-*/).")],
    out: Annotated[Path, typer.Option("--out", help="Evaluation folder.")],
    methods: Annotated[
        str | None, typer.Option("--methods", help="Comma-separated subset (default: all found).")
    ] = None,
    users: Annotated[int | None, typer.Option("--users", help="Evaluation users.")] = None,
    items: Annotated[int | None, typer.Option("--items", help="Evaluation items.")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Denoising steps of ICG methods.")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="CFG of ICG methods.")
    ] = None,
    strength: Annotated[
        float | None, typer.Option("--strength", help="ICG methods: < 1 starts from the reference.")
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option("--candidates", help="ICG methods: best-of-K under each run's own reward."),
    ] = None,
    user_guidance: Annotated[
        float | None,
        typer.Option("--user-guidance", help="ICG methods: user guidance w_u (1: plain draw)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    clip: Annotated[str | None, typer.Option("--clip", help="Default zoo:clip.")] = None,
    aesthetic: Annotated[
        str | None, typer.Option("--aesthetic", help="Default zoo:aesthetic.")
    ] = None,
    base: Annotated[str | None, typer.Option("--base", help="Override the base model.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with EvalConfig fields.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the contents of a non-empty --out.")
    ] = False,
) -> None:
    """Score every method's covers on the same pairs: metrics.json and report.html.

    Options left out take their value from --config, else the `EvalConfig` default.
    """
    from icg.config import load_config
    from icg.evaluation.run import EvalConfig, evaluate_run

    try:
        cfg = load_config(
            EvalConfig, config, methods=methods.split(",") if methods else None, n_users=users,
            n_items=items, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
            strength=strength, candidates=candidates, clip=clip, aesthetic=aesthetic, base=base,
            user_guidance=user_guidance,
        )  # fmt: skip
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise typer.BadParameter(str(err)) from err
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    try:
        metrics = evaluate_run(data, run, out, cfg, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    print_metrics(metrics)
    typer.echo(f"report: {out / 'report.html'}")


def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the world, the runs and the report.")
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option(help="A smaller world and budget (about 2 minutes).")
    ] = False,
    seed: Annotated[int, typer.Option(help="World, evaluation and training seed.")] = 3,
    train_seed: Annotated[
        int | None,
        typer.Option(help="Training seed, when it should differ from --seed (same world)."),
    ] = None,
    ablations: Annotated[
        bool | None,
        typer.Option(
            "--ablations/--no-ablations",
            help="Also train and evaluate the single-reward runs (default: with --quick only).",
        ),
    ] = None,
    base: Annotated[
        str, typer.Option(help="Diffusion base model: a local path, hub id or zoo: name.")
    ] = DEFAULT_BASE,
    mllm: Annotated[
        str, typer.Option(help="MLLM: a local path, hub id or zoo: name.")
    ] = DEFAULT_MLLM,
) -> None:
    """The whole ICG loop on CoverWorld + coverworld-tiny, ending in an HTML report."""
    import json

    from icg.demo import DemoFolderError, run_demo

    try:
        report = run_demo(
            out, quick=quick, seed=seed, train_seed=train_seed, ablations=ablations, base=base,
            mllm=mllm,
        )  # fmt: skip
    except DemoFolderError as err:
        raise typer.BadParameter(str(err)) from err
    print_metrics(json.loads((report.parent / "metrics.json").read_text()))
    typer.echo(f"report: {report}")


# metrics.json key -> terminal header
COLUMNS = {
    "fidelity_motif": "motif", "fidelity_palette": "palette", "true_aesthetic": "aesthetic",
    "true_taste_match": "taste", "true_ctr": "CTR", "lift_fraction": "lift", "true_ctr_coldstart": "CTR cold",
    "aesthetic_reward": "aes. rew.", "clipscore": "CLIPScore", "preference_score": "pref.",
    "rec_auc": "rec AUC", "rec_ndcg10": "NDCG@10",
}  # fmt: skip


def print_metrics(metrics: dict) -> None:
    """The metrics table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="icg evaluation (metrics.json)")
    methods = metrics["methods"]
    cols = [c for c in COLUMNS if any(c in m for m in methods.values())]
    table.add_column("method", no_wrap=True)
    for c in cols:
        table.add_column(COLUMNS[c], justify="right", no_wrap=True)
    for name, m in methods.items():
        table.add_row(name, *(f"{m[c]:.3f}" if c in m else "" for c in cols))
    console = Console(width=max(160, Console().width))
    console.print(table)
    gain = metrics.get("personal_gain")
    if gain:
        console.print(
            f"personal gain (user swap, true CTR): {gain['mean']:+.4f} "
            f"[95% CI {gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}], n={gain['n']}"
        )
