"""Benchmark: the fast inference path against the anchors' naive per-image loop, side by side.

``python -m hxpe.bench [--quick] [--out results/bench] [--device auto|cpu|cuda] [--batch-size N]``
writes ``<out>/<host>.json`` and ``<out>/<host>.md``. Every figure is measured in the same run.

Sections, each fast vs naive (:mod:`hxpe.model.inference`):

* **demo**: the demo profile's small trained backbones (variants ``hxpe`` = AdaCLIP base and
  ``hxpe_anomalyclip``) on generated demo images (128 px).
* **paper**: the paper-size architecture (ViT-L/14@336 CLIP at 518 px + DINOv2 ViT-S/14) with
  RANDOM WEIGHTS (:func:`hxpe.model.model.build_paper_architecture_random`) on a handful of generated
  518 px images: compute and memory are those of the real model, outputs mean nothing.

Per model: evaluation images/s and peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on
GPU), the largest fast-vs-naive difference, seconds per training step, ms per distinct phrase encoded
(naive per image, fast uncached, fast cached), a per-stage time breakdown (CLIP vision, text, DINOv2,
maps/heads, smoothing) and the torch.profiler top operators of one fast batch. Then: peak host memory
while streaming maps to disk for two dataset sizes (against keeping them in RAM), and AUPRO time
(vectorised vs loop, from :mod:`hxpe.evaluation`, skipped with a note when absent).

On a GPU: ``python -m hxpe.bench --device cuda --batch-size 32`` (bf16 autocast on the fast path).

Modules: :mod:`~hxpe.bench.timers` (device sync, peak memory, per-submodule wall time),
:mod:`~hxpe.bench.inputs` (generated demo images and phrases), :mod:`~hxpe.bench.measure` (the
measurements), :mod:`~hxpe.bench.report` (the markdown summary) and :mod:`~hxpe.bench.run` (the
driver and command line).
"""
