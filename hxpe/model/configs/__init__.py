"""JSON configs of the tiny random-init test models and the real-size DINOv2 architecture."""
