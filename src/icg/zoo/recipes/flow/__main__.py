"""``python -m icg.zoo.recipes.flow``: see `icg.zoo.recipes.flow.recipe.main`."""

from icg.zoo.recipes.flow.recipe import main

main()
