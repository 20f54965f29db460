"""``python -m hxpe.bench``: run the benchmark (:func:`hxpe.bench.run.main`)."""

import os

# Benchmarks build random-init models from bundled configs: never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hxpe.bench.run import main  # noqa: E402

main()
