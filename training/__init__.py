"""The curated-reference pipeline: ``python -m training build NAME`` turns ``training/recipes/NAME.json``
into a reference folder with a measured model card, bundles it and updates the packaged index;
``python -m training verify NAME`` refits it and checks it is bit-for-bit the bundled one."""
