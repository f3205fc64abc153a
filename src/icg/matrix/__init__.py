"""The recipe matrix: recipes × CoverWorld worlds × training seeds, trained, evaluated on the
truth and compared with runs as the unit (`icg bench recipes`; docs/recipes.md).

    spec      Recipe (a YAML file of overrides of the demo's settings), load_recipe
    plan      MatrixSpec, plan_matrix: jobs in folders named by their config's hash
    jobs      run_job: world, preference, stage A, cell (stage B + evaluation)
    evaluate  evaluate_cell: per-pair true CTR of one draw, best of K, reference, variant-select
    engines   local, process, ray
    stats     t_interval, paired_difference, seed_spread (runs are the unit)
    table     matrix.json + matrix.md
    run       run_matrix
"""

from icg.matrix.plan import MatrixSpec, config_hash, plan_matrix
from icg.matrix.run import describe, run_matrix
from icg.matrix.spec import Recipe, RecipeError, load_recipe
from icg.matrix.stats import Interval, paired_difference, seed_spread, t_interval

__all__ = [
    "Interval",
    "MatrixSpec",
    "Recipe",
    "RecipeError",
    "config_hash",
    "describe",
    "load_recipe",
    "paired_difference",
    "plan_matrix",
    "run_matrix",
    "seed_spread",
    "t_interval",
]
