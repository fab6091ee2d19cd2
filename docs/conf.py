"""Sphinx configuration: the API reference is generated from the numpy-style docstrings of the public names
in ``itclust_hub/__init__.py`` (autosummary + autodoc, napoleon). Build: ``sphinx-build -W -b html docs OUT``."""

import itclust_hub

project = "itclust-hub"
copyright = "itclust-hub authors"
release = version = itclust_hub.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
autosummary_generate = True
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

exclude_patterns = ["_build", "images"]
html_theme = "alabaster"
html_title = f"itclust-hub {release}"
