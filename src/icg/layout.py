"""The names of every file and folder icg writes into a run or output folder, in one place.

A demo folder reads::

    OUT/world/                       CoverWorld platform data (WORLD_CONFIG_FILE; TRUTH_DIR beside)
    OUT/run/preference/              the preference model (PREFERENCE_CONFIG_FILE + weights,
                                     TRAIN_CONFIG_FILE, METRICS_FILE, PREFERENCE_CACHE_FILE)
    OUT/run/align/                   stage A: ADAPTER_DIR/ (ICG_CONFIG_FILE + parts),
                                     RUN_CONFIG_FILE, CURVES_FILE, CHECKPOINTS_DIR/, RUN_FILE
    OUT/run/icg/                     stage B: the same, plus STATS_FILE (and LORA_FILE)
    OUT/eval/                        METRICS_FILE, REPORT_FILE, COVERS_DIR/, REJECTS_DIR/
    OUT/gen/                         `icg generate`: <method>/*.png + MANIFEST_FILE

Every module that reads or writes one of these imports the name from here; nothing spells
them again.
"""

from __future__ import annotations

# ---- a training run (stage A, stage B, preference) -----------------------------------------
ADAPTER_DIR = "adapter"  # the final ICG model (`ICGModel.save_pretrained`)
ICG_CONFIG_FILE = "icg_config.json"  # inside ADAPTER_DIR: the ICG model's record
RUN_CONFIG_FILE = "config.yaml"  # the validated recipe config of a run
TRAIN_CONFIG_FILE = "train_config.yaml"  # the preference model's training config
STATS_FILE = "reward_stats.safetensors"  # stage B's reward normalisation statistics
LORA_FILE = "unet_lora.safetensors"  # stage B's optional LoRA on the UNet or transformer
CURVES_FILE = "curves.jsonl"  # one JSON row per logged step
CHECKPOINTS_DIR = "checkpoints"  # `icg.checkpoints` folders
CHECKPOINT_MODEL_DIR = "model"  # inside one checkpoint: the model's `save_pretrained`
RUN_FILE = "run.json"  # `icg.runs`: what --resume / --overwrite check
PREFERENCE_CONFIG_FILE = "config.json"  # a saved `PreferenceModel`'s config
PREFERENCE_CACHE_FILE = "cache/cover_embeddings.safetensors"  # CLIP embeddings of the covers

# ---- the runs of one demo / evaluation folder ------------------------------------------------
PREFERENCE_RUN = "preference"
ALIGN_RUN = "align"
REWARD_RUN = "icg"  # the stage-B run every ICG method and `icg generate` default to

# ---- outputs ---------------------------------------------------------------------------------
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
REJECTS_DIR = "rejects"  # rows a loader refused, with the reason
COVERS_DIR = "covers"
MANIFEST_FILE = "manifest.parquet"  # `icg generate`: one row per (user, item) cover
MANIFEST_LOCK_FILE = ".manifest.lock"  # flock'd around a manifest merge (`icg.io.file_lock`)
PLAN_DIR = "plan"  # `icg batch`: segments, units and settings of a batch
PLAN_SETTINGS_FILE = "settings.json"  # inside PLAN_DIR: what --resume must match
PLAN_PAIRS_FILE = "pairs.parquet"  # inside PLAN_DIR: the wanted (user, item) pairs
PLAN_SEGMENTS_FILE = "segments.parquet"  # inside PLAN_DIR: segment keys and embeddings
PLAN_USERS_FILE = "users.parquet"  # inside PLAN_DIR: each user's segment(s)
PLAN_UNITS_FILE = "units.parquet"  # inside PLAN_DIR: one row per (segment, item) unit
BATCH_MANIFEST_DIR = "manifest"  # `icg batch`: partition=NNNNN/PART_FILE, one per partition
BATCH_PART_FILE = "part.parquet"
ASSIGNMENTS_FILE = "assignments.parquet"  # `icg batch`: each (user, item)'s cover
SUMMARY_FILE = "summary.json"  # `icg batch`: counts and timings

# ---- CoverWorld -------------------------------------------------------------------------------
WORLD_CONFIG_FILE = "world.yaml"
TRUTH_DIR = "truth"  # the world's hidden truth: evaluation only, never training
