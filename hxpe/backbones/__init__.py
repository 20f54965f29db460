"""The demo profile's backbones, trained by the project: a small open_clip CLIP (both towers) and a
small transformers DINOv2, pretrained on generated scenes (:mod:`hxpe.backbones.scenes`) whose random
streams are disjoint from the demo's aux and target sets. ``make demo-backbones`` runs
:mod:`hxpe.backbones.build`; the weights live in ``hxpe/model/weights/demo/``.
"""

# What every demo label says about these models (tables, figures, logs, README).
DEMO_BACKBONES_LABEL = (
    "small backbones trained here on generated scenes; not the paper's models or numbers"
)
