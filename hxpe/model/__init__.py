"""The HXPE model (stage 04/05): CLIP base models, explainable text prompts, DINOv2 attention prompts.

Entry points: :func:`hxpe.model.hxpe.build_model`, :class:`hxpe.model.hxpe.HXPEModel`,
:func:`hxpe.model.checkpoint.load_checkpoint`; training lives in :mod:`hxpe.train`. Settings are in
:mod:`hxpe.model.config`, their sources in ``hxpe/LEDGER.md``.
"""
