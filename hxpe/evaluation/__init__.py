"""Stage 05: anomaly maps, metrics (image and pixel level, AUPRO) and tables."""
