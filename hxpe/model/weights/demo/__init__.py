"""The demo backbones (data files: safetensors, config, provenance): README.md says what they saw
and how ``make demo-backbones`` made them."""
