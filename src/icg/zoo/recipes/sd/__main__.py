"""``python -m icg.zoo.recipes.sd``: see `icg.zoo.recipes.sd.recipe.main`."""

from icg.zoo.recipes.sd.recipe import main

main()
