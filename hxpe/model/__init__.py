"""The HXPE model (stage 04/05): CLIP base models, explainable text prompts, DINOv2 attention prompts.

Entry points: :func:`hxpe.model.model.build_model`, :class:`hxpe.model.model.HXPEModel`,
:func:`hxpe.model.checkpoint.load_checkpoint`; the bases, one module each, are registered where they
are defined (:mod:`hxpe.model.bases`; their arithmetic defaults to the authors' code, proven by
``hxpe check-equivalence``); the authors' checkpoints import through :mod:`hxpe.model.importers`;
training lives in :mod:`hxpe.train`. Settings are in :mod:`hxpe.model.config`, their sources in
``hxpe/LEDGER.md``; ``hxpe/ARCHITECTURE.md`` maps each paper idea to its file.
"""
