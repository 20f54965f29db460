"""The CLIP bases, one module each, registered where they are defined
(:func:`hxpe.model.bases.base.register_base`): importing this package registers all of them.

* :mod:`hxpe.model.bases.adaclip`: AdaCLIP (static + dynamic prompts, hybrid semantic fusion);
* :mod:`hxpe.model.bases.anomalyclip`: AnomalyCLIP (object-agnostic prompts, v-v attention);
* :mod:`hxpe.model.bases.winclip`: WinCLIP (training-free, window re-encoding).

The interface the glue uses is :mod:`hxpe.model.bases.base`.
"""

from hxpe.model.bases import adaclip, anomalyclip, winclip

__all__ = ["adaclip", "anomalyclip", "winclip"]
