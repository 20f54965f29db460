"""Sphinx configuration of the HXPE book (``make book PROFILE=<p>``; see ``hxpe/book.py``).

The book renders notebooks that ``make all`` already executed: nothing runs at build time. MathJax is
served from the book itself (sphinx-mathjax-offline), so it reads offline.
"""

import os

project = "HXPE compendium"
author = "HXPE compendium authors"
copyright = "2025-2026, the HXPE compendium authors"  # noqa: A001 (Sphinx's name)
profile = os.environ.get("HXPE_BOOK_PROFILE", "demo")
html_title = f"HXPE compendium: {profile} profile"

extensions = ["myst_nb", "sphinx-mathjax-offline"]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = "off"  # render the executed notebooks as they are
nb_merge_streams = True
nb_output_stderr = "remove"  # kernel warnings stay in the notebook files, not in the book
exclude_patterns = ["_build"]
suppress_warnings = ["myst.header"]

html_theme = "sphinx_book_theme"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_show_sourcelink = False
html_favicon = "favicon.svg"
html_last_updated_fmt = None
html_context = {"default_mode": "light"}
# No widget manager from a CDN: the executed notebooks' widgets are shown as their static output.
nb_ipywidgets_js = {}
