"""`icg train ...`: thin Typer wrappers over the training recipes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from icg.config import load_config
from icg.layout import CURVES_FILE

logger = logging.getLogger(__name__)


# the EMA options of both training stages (icg.training.ema)
EmaDecay = Annotated[
    float | None,
    typer.Option("--ema-decay", help="Largest decay of the EMA saved as the adapter."),
]
NoEma = Annotated[bool, typer.Option("--no-ema", help="Save the raw trained weights (no EMA).")]


def _without_ema(cfg):
    """``cfg`` with ``ema_decay: null`` (``--no-ema``: the adapter holds the raw weights)."""
    return cfg.model_copy(update={"ema_decay": None})


def align(
    data: Annotated[
        Path, typer.Option("--data", help="Platform data folder (items, users, impressions).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder, e.g. RUN/align.")],
    base: Annotated[
        str | None, typer.Option("--base", help="Base SD pipeline (default zoo:sd).")
    ] = None,
    mllm: Annotated[
        str | None, typer.Option("--mllm", help="Image-text-to-text MLLM (default zoo:mllm).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with AlignConfig fields.")
    ] = None,
    init_adapter: Annotated[
        str | None,
        typer.Option(
            "--init-adapter",
            help="Pretrained ICG adapter to start from: a folder, zoo:icg-adapter, or none "
            "(zero init; the default).",
        ),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Override max_steps.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override seed.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="Override learning_rate.")
    ] = None,
    preference: Annotated[
        Path | None,
        typer.Option("--preference", help="Trained preference model (RUN/preference)."),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            help="clicks (the clicked covers) or preferred (per shown pair, the variant the "
            "preference model prefers for the user; needs --preference).",
        ),
    ] = None,
    click_weighting: Annotated[
        str | None,
        typer.Option(
            "--click-weighting",
            help="Weight of each clicked cover: uniform, ips or advantage (need --preference).",
        ),
    ] = None,
    user_dropout: Annotated[
        float | None,
        typer.Option("--user-dropout", help="Fraction of each batch trained without its user."),
    ] = None,
    user_words: Annotated[
        int | None,
        typer.Option(
            "--user-words",
            help="Style words for the user's taste in the prompt (default 2; 0: none).",
        ),
    ] = None,
    style_vocabulary: Annotated[
        Path | None,
        typer.Option(
            "--style-vocabulary",
            help="JSON {group: {phrase: CLIP text}} for the user words (default: coverworld-tiny's).",
        ),
    ] = None,
    global_conditioning: Annotated[
        bool | None,
        typer.Option(
            "--global-conditioning/--no-global-conditioning",
            help="The adapter also conditions the UNet's timestep embedding (default: on).",
        ),
    ] = None,
    read_image: Annotated[
        bool | None,
        typer.Option(
            "--read-image/--no-read-image",
            help="The MLLM reads the reference image with the title (default: on).",
        ),
    ] = None,
    user_refiner: Annotated[
        bool | None,
        typer.Option(
            "--user-refiner/--no-user-refiner",
            help="The user refines the meta tokens (default: on; off: the user words alone).",
        ),
    ] = None,
    ema_decay: EmaDecay = None,
    no_ema: NoEma = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the previous run in --out.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Stage A: align the ICG adapter with the denoising loss on the covers users prefer."""
    # deferred: every command module is imported for `icg --help`; this loads torch
    from icg.training.align import AlignConfig, run_align

    try:
        cfg = load_config(
            AlignConfig,
            config,
            data=data,
            out=out,
            base=base,
            mllm=mllm,
            init_adapter=init_adapter,
            max_steps=max_steps,
            seed=seed,
            learning_rate=learning_rate,
            preference=preference,
            targets=targets,
            click_weighting=click_weighting,
            user_dropout=user_dropout,
            user_words=user_words,
            style_vocabulary=style_vocabulary,
            global_conditioning=global_conditioning,
            read_image=read_image,
            user_refiner=user_refiner,
            ema_decay=ema_decay,
        )
    except (ValidationError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    cfg = _without_ema(cfg) if no_ema else cfg
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    result = run_align(cfg, resume=resume, overwrite=overwrite)
    typer.echo(
        f"adapter: {result.adapter_dir} ({result.steps} steps, last loss {result.losses[-1]:.5f})"
    )


def preference(
    data: Annotated[
        Path, typer.Option("--data", help="Data folder: impressions, or implicit feedback.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder, e.g. RUN/preference.")],
    clip: Annotated[
        str | None, typer.Option("--clip", help="CLIP for cover embeddings (default zoo:clip).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with PreferenceConfig fields.")
    ] = None,
    debias: Annotated[
        str | None, typer.Option("--debias", help="pbm (default), ips or none.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override epochs.")] = None,
    log_half: Annotated[
        int | None,
        typer.Option(
            "--log-half",
            help="Fit on half 0 or 1 of the click log only (the tripwire's two models).",
        ),
    ] = None,
    compare_naive: Annotated[
        bool,
        typer.Option(
            "--compare-naive", help="Also fit a naive model and report both (truth only)."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the previous model in --out.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Fit the position-debiased preference model on click logs; print AUC beside the Bayes AUC."""
    # deferred: every command module is imported for `icg --help`; these load torch
    from icg.evaluation.preference_eval import preference_truth_report
    from icg.training.preference import PreferenceConfig, train_preference

    try:
        cfg = load_config(
            PreferenceConfig, config, clip=clip, debias=debias, epochs=epochs, log_half=log_half
        )
    except (ValidationError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    result = train_preference(data, out, cfg, overwrite=overwrite)
    m = result.metrics
    typer.echo(
        f"preference model: {out} ({m['train_events']} train / {m['val_events']} val events)"
    )
    typer.echo(f"  val AUC {m['val_auc']:.4f}   val log-loss {m['val_logloss']:.4f}")
    # evaluation only: the hidden truth of a CoverWorld ({} for other data)
    truth = preference_truth_report(data, result, cfg, compare_naive=compare_naive)
    report = truth.get("fit", {})
    if "bayes_auc" in report:
        typer.echo(f"  Bayes-optimal AUC (truth p_click, same events) {report['bayes_auc']:.4f}")
    if "taste_spearman" in report:
        typer.echo(
            f"  taste ranking ({cfg.debias}): Spearman {report['taste_spearman']:.4f}, "
            f"within-item pairwise acc {report['taste_pairwise_acc']:.4f}"
        )
    naive = truth.get("naive")
    if naive:
        typer.echo(
            f"  taste ranking (naive):  Spearman {naive['taste_spearman']:.4f}, "
            f"within-item pairwise acc {naive['taste_pairwise_acc']:.4f}, "
            f"val AUC {naive['val_auc']:.4f}"
        )


def reward(
    data: Annotated[
        Path, typer.Option("--data", help="Platform data folder (pairs are drawn from it).")
    ],
    init: Annotated[Path, typer.Option("--init", help="Stage-A run folder (RUN/align).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder, e.g. RUN/icg.")],
    preference: Annotated[
        Path | None, typer.Option("--preference", help="Preference model folder (RUN/preference).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with RewardConfig fields.")
    ] = None,
    rewards: Annotated[
        str | None,
        typer.Option("--rewards", help="Weights, e.g. aesthetic=1,relevance=1,preference=1."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Override max_steps.")
    ] = None,
    trainer: Annotated[
        str | None,
        typer.Option(
            "--trainer",
            help="draft (DRaFT-K), ranked (own best draws), nft (DiffusionNFT) or grpo (policy "
            "gradient, DDPO/GRPO).",
        ),
    ] = None,
    user_guidance: Annotated[
        float | None, typer.Option("--user-guidance", help="User guidance while sampling.")
    ] = None,
    ema_decay: EmaDecay = None,
    no_ema: NoEma = False,
    tripwire_preference: Annotated[
        Path | None,
        typer.Option(
            "--tripwire-preference",
            help="Held-out preference model (fitted on the other --log-half than --preference): "
            "stop at the best held-out reward when it falls while the training reward rises.",
        ),
    ] = None,
    tripwire_every: Annotated[
        int | None, typer.Option("--tripwire-every", help="Steps between tripwire evaluations.")
    ] = None,
    tripwire_patience: Annotated[
        int | None,
        typer.Option(
            "--tripwire-patience",
            help="Evaluations in a row with held-out down and training up before stopping.",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the previous run in --out.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Stage B: multi-reward alignment of meta tokens, refiner and adapter."""
    # deferred: every command module is imported for `icg --help`; these load torch
    from icg.evaluation.preference_eval import truth_callbacks
    from icg.rewards import parse_weights
    from icg.training.reward import RewardConfig, run_reward

    try:
        cfg = load_config(
            RewardConfig,
            config, data=data, init=init, out=out, preference=preference,
            rewards=parse_weights(rewards) if rewards else None, max_steps=max_steps,
            trainer=trainer, user_guidance=user_guidance, ema_decay=ema_decay,
            tripwire_preference=tripwire_preference, tripwire_every=tripwire_every,
            tripwire_patience=tripwire_patience,
        )  # fmt: skip
    except (ValidationError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    cfg = _without_ema(cfg) if no_ema else cfg
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    # monitoring only: the truth probe exists only for a CoverWorld and never reaches the loss
    callbacks = truth_callbacks(data)
    result = run_reward(cfg, resume=resume, callbacks=callbacks, overwrite=overwrite)
    last = result.rewards[-1] if result.rewards else float("nan")
    typer.echo(f"adapter: {result.adapter_dir} ({result.steps} steps, last reward {last:.4f})")
    if result.tripwire_step is not None:
        typer.echo(f"tripwire: fired at step {result.tripwire_step}; kept the best held-out step")
    typer.echo(f"curves: {cfg.out / CURVES_FILE}")
