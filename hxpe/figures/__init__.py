"""Stage 06: every figure of the compendium, regenerated from the stored artifacts of stages 01-05.

:mod:`hxpe.figures.stage` (:func:`~hxpe.figures.stage.make_all`) drives the stage; its settings are
:class:`hxpe.figures.config.FiguresConfig` (the ``figures`` section of a profile). The package
imports nothing, so that the configuration can load ``figures.config`` without matplotlib or torch.
"""
