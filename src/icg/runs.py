"""Run folders: a training run records what it is, so a rerun can never mix with another run.

    start_run(out, config, kind="align", resume=..., overwrite=...)   # before any heavy work

writes ``out/run.json`` (kind, config hash, the hashed config) and enforces, before anything
loads or writes:

- ``--resume`` continues only the same run: a different config hash in ``run.json`` or in the
  latest checkpoint's trainer state is refused, naming the fields that differ;
- a fresh run into a folder that holds something else (another run, checkpoints of this run,
  files icg did not write) is refused unless ``overwrite``, which removes the previous run's
  checkpoints, curves and record (nothing else);
- what interrupted writes left behind (``.tmp-*``) is removed, and an artifact that was moved
  aside by an interrupted replace is restored (`icg.safety.clean_leftovers`);
- the run folder never lies inside the data folder.

Fields that do not change what a step computes (`RESUMABLE`: ``max_steps``, checkpoint and log
cadence, the output folder) are left out of the hash, so a run can be resumed to train longer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from icg.checkpoints import list_checkpoints, read_trainer_state
from icg.io import TMP_PREFIX, atomic_write_json
from icg.layout import CHECKPOINTS_DIR, CURVES_FILE, RUN_FILE
from icg.safety import OutputExistsError, UnsafePathError, check_not_inside, clean_leftovers

logger = logging.getLogger(__name__)

RESUMABLE = frozenset(
    {"out", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "probe_every"}
)
"""Config fields left out of the run's hash: changing them does not change what a step does."""
PREVIOUS_RUN = (CHECKPOINTS_DIR, CURVES_FILE, RUN_FILE)
"""What ``overwrite`` removes: the entries a new run would otherwise mix with."""


class RunConfigError(ValueError):
    """A run folder holds a different run (or an unreadable record) than the one started."""


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (or a plain process): the one that writes."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return True


def _normal(value: Any) -> Any:
    return str(Path(value).resolve()) if isinstance(value, Path) else value


def run_identity(config: BaseModel, kind: str, inputs: Mapping[str, Any] | None = None) -> dict:
    """What a run's hash covers: its kind, its config without `RESUMABLE` fields (paths
    resolved) and ``inputs`` (e.g. the data folder of a recipe whose config does not hold it)."""
    dumped = config.model_dump(mode="json")
    values = {
        name: _normal(getattr(config, name)) if isinstance(getattr(config, name), Path) else v
        for name, v in dumped.items()
        if name not in RESUMABLE
    }
    values |= {k: _normal(Path(v)) for k, v in (inputs or {}).items() if v is not None}
    return {"kind": kind, "config": values}


def identity_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of an identity's canonical JSON."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "the records differ"


def _read_record(out: Path) -> dict | None:
    file = out / RUN_FILE
    if not file.exists():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise ValueError("expected an object with 'kind', 'config' and 'config_hash'")
    except (OSError, ValueError) as err:
        raise RunConfigError(
            f"{file}: unreadable run record ({err}); pass --overwrite to start a new run there, "
            "or choose another --out"
        ) from err
    return record


def _checkpoint_identity(checkpoint: Path, kind: str, config: BaseModel) -> dict | None:
    """The identity of the run that wrote ``checkpoint`` (from its trainer state's config)."""
    state = read_trainer_state(checkpoint)
    saved = state.get("config")
    if not isinstance(saved, dict):
        return None
    try:
        return run_identity(type(config).model_validate(saved), kind)
    except ValueError:  # a config this version cannot even read is a different run
        return {"kind": kind, "config": saved}


def start_run(
    out: str | Path,
    config: BaseModel,
    *,
    kind: str,
    resume: bool = False,
    overwrite: bool = False,
    inputs: Mapping[str, Any] | None = None,
    data: str | Path | None = None,
) -> dict:
    """Check ``out`` for a run of ``config`` (see the module doc) and record it.

    Args:
        out: the run folder.
        config: the run's validated pydantic config.
        kind: ``"align"``, ``"reward"``, ``"preference"``, ...
        resume: continue from the latest checkpoint (``--resume``).
        overwrite: replace a previous run in ``out`` (``--overwrite``).
        inputs: hashed beside the config (inputs the config does not hold).
        data: the data folder (default ``config.data``); ``out`` may not lie inside it.

    Returns:
        The record written to ``out/run.json``.

    Raises:
        RunConfigError: ``out`` holds a run with a different config (or an unreadable one).
        OutputExistsError: a fresh run into a folder that holds something, without
            ``overwrite``.
        UnsafePathError: ``out`` is inside the data folder or is not a folder.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    out = Path(out)
    check_not_inside(out, [data if data is not None else getattr(config, "data", None)], "--out")
    if out.exists() and not out.is_dir():
        raise UnsafePathError(f"--out {out} exists and is not a folder")
    identity = run_identity(config, kind, inputs)
    record = {**identity, "config_hash": identity_hash(identity), "format": 1}
    if not overwrite:
        _check_same_run(out, identity, record["config_hash"], config, kind, resume)
    if not is_main_process():
        return record
    if overwrite:
        for name in PREVIOUS_RUN:
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
                logger.warning("--overwrite: removed the previous run's %s", entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    atomic_write_json(out / RUN_FILE, record)
    return record


def _same_but_new_defaults(
    old: Mapping[str, Any], new: Mapping[str, Any], config: BaseModel
) -> bool:
    """Whether the recorded config ``old`` equals ``new`` once the fields it lacks (settings added
    after it was written) are read as their defaults, and ``config`` leaves them there."""
    fields = type(config).model_fields
    missing = set(new) - set(old)
    if set(old) - set(new) or not missing <= set(fields):
        return False
    unchanged = all(
        getattr(config, k) == fields[k].get_default(call_default_factory=True) for k in missing
    )
    return unchanged and all(old[k] == new[k] for k in old)


def _check_same_run(
    out: Path, identity: dict, digest: str, config: BaseModel, kind: str, resume: bool
) -> None:
    if not out.is_dir():
        return
    existing = _read_record(out)
    checkpoints = list_checkpoints(out / CHECKPOINTS_DIR)
    hint = "pass --overwrite to replace it, or choose another --out"
    if existing is not None and existing.get("config_hash") != digest:
        old = existing.get("config", {})
        if existing.get("kind") == kind and _same_but_new_defaults(old, identity["config"], config):
            return  # written before this version added settings the run leaves at their default
        what = f"a {existing.get('kind', 'different')} run" if existing.get("kind") != kind else ""
        raise RunConfigError(
            f"{out}: holds {what or 'a run'} with a different config "
            f"({_differences(old, identity['config'])}); "
            f"{'--resume continues only the same run; ' if resume else ''}{hint}"
        )
    if checkpoints:
        saved = _checkpoint_identity(checkpoints[-1], kind, config)
        if saved is not None and identity_hash(saved) != digest:
            raise RunConfigError(
                f"{checkpoints[-1]}: written by a run with a different config "
                f"({_differences(saved['config'], identity['config'])}); {hint}"
            )
    held = sorted(
        e.name for e in out.iterdir() if e.name != RUN_FILE and not e.name.startswith(TMP_PREFIX)
    )
    if existing is None and held and not (resume and checkpoints):
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise OutputExistsError(
            f"--out {out} is not empty (holds {shown}) and records no icg run; {hint}"
        )
    if not resume and checkpoints:
        raise OutputExistsError(
            f"--out {out} holds checkpoints of this run (latest {checkpoints[-1].name}); pass "
            "--resume to continue it, or --overwrite to start over"
        )
