"""Thin ComfyUI node classes; each file adapts ComfyUI types to one feature."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
