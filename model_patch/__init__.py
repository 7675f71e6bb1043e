"""The ComfyUI model patch: attention replacements, U-Net wrapper, per-run identity keys/values."""
