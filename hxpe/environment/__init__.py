"""The compendium's own environments: the two version locks (``make lock``) and the Jupyter kernels
that papermill runs the stages in (``make venv``, ``make gpu-env``)."""
