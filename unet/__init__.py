"""SDXL U-Net layout: where the 70 transformer layers sit and how to walk them."""
