"""JSON configs of the tiny random-init test models, the demo backbones (trained weights in
hxpe/model/weights/demo/) and the real-size DINOv2 architecture."""
