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
# `{only} demo` blocks (the index page's demo warning) appear in the demo profile's book only.
if profile == "demo":
    tags.add("demo")  # noqa: F821 (Sphinx provides `tags` to conf.py)

extensions = ["myst_nb", "sphinx-mathjax-offline"]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = "off"  # render the executed notebooks as they are
# Markdown outputs (the tables of notebook 05, the equations rendered from the config) are parsed as
# MyST with the extensions above, so their tables and math render (CommonMark has neither).
nb_render_markdown_format = "myst"
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
html_static_path = ["_static"]
html_css_files = ["hxpe.css"]  # wide equations and tables scroll instead of being clipped
html_last_updated_fmt = None
html_context = {"default_mode": "light"}
# No widget manager from a CDN: the executed notebooks' widgets are shown as their static output.
nb_ipywidgets_js = {}
