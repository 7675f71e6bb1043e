"""``InfiniteIDMix``, ``InfiniteIDInterpolate`` and ``InfiniteIDIdentityBatch`` (docs/IDENTITY.md).

Mix and Interpolate act on the identity tokens (``identity/mixing.py`` says why and how
weights act); Identity Batch joins people as rows (``identity/batch.py``).
"""
from __future__ import annotations

import logging

from ..host.errors import node_error
from ..identity.batch import batch
from ..identity.mixing import interpolate, mix, parse_weights, sweep_values
from .inputs import checked_inputs

log = logging.getLogger(__name__)

MIX = "InfiniteIDMix"
INTERPOLATE = "InfiniteIDInterpolate"
BATCH = "InfiniteIDIdentityBatch"
MAX_MIX = 8
MAX_BATCH = 8


class InfiniteIDMix:
    DESCRIPTION = ("Identity mixing: stack the tokens of several identities so the result carries features of each. "
                   "Connect two to eight identities.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["mix faces", "blend identities", "merge faces", "combine identities", "identity mixing",
                      "face id mix"]
    RETURN_TYPES = ("INFINITEID_IDENTITY",)
    RETURN_NAMES = ("identity",)
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls):
        sockets = {f"identity_{i}": ("INFINITEID_IDENTITY", {"tooltip": f"Optional person {i}."})
                   for i in range(3, MAX_MIX + 1)}
        return {
            "required": {
                "identity_1": ("INFINITEID_IDENTITY", {"tooltip": "First person (from InfiniteID Encode)."}),
                "identity_2": ("INFINITEID_IDENTITY", {"tooltip": "Second person."}),
                "weights": ("STRING", {"default": "", "multiline": False,
                            "tooltip": "Optional, one per connected identity in socket order, e.g. '1, 0.6'. "
                                       "1 keeps a person, 0 fades them to a neutral slot. Empty: all 1."}),
            },
            "optional": sockets,
        }

    @checked_inputs(MIX)
    def mix(self, identity_1, identity_2, weights="", **more):
        with node_error(MIX):
            named = [("identity_1", identity_1), ("identity_2", identity_2)]
            named += [(f"identity_{i}", more[f"identity_{i}"]) for i in range(3, MAX_MIX + 1)
                      if more.get(f"identity_{i}") is not None]
            names = [name for name, _ in named]
            values = parse_weights(weights, len(named))
            return (mix([identity for _, identity in named], values, names),)


class InfiniteIDInterpolate:
    DESCRIPTION = ("Blend two identities: t = 0 is identity_a, t = 1 is identity_b. With steps > 1 the output holds "
                   "that many identities from t = 0 to 1; sample it with a latent batch of the same size for a sweep.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["interpolate faces", "blend identities", "morph faces", "face morph", "identity sweep",
                      "face id blend"]
    RETURN_TYPES = ("INFINITEID_IDENTITY",)
    RETURN_NAMES = ("identity",)
    FUNCTION = "interpolate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity_a": ("INFINITEID_IDENTITY", {"tooltip": "The identity at t = 0."}),
            "identity_b": ("INFINITEID_IDENTITY", {"tooltip": "The identity at t = 1."}),
            "t": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                            "tooltip": "Share of identity_b (used when steps is 1)."}),
            "steps": ("INT", {"default": 1, "min": 1, "max": 64,
                              "tooltip": "1: one blend at t. More: a batch of identities evenly from t = 0 to 1 "
                                         "(t is then ignored); use a latent batch of the same size."}),
        }}

    @checked_inputs(INTERPOLATE)
    def interpolate(self, identity_a, identity_b, t, steps):
        with node_error(INTERPOLATE):
            if steps > 1:
                log.info("%s: sweep of %d identities from t = 0 to 1 (t input ignored)", INTERPOLATE, steps)
                return (interpolate(identity_a, identity_b, sweep_values(steps)),)
            return (interpolate(identity_a, identity_b, t),)


class InfiniteIDIdentityBatch:
    DESCRIPTION = ("Several people as one identity batch: row i is identity_i. Sample it with a latent batch of 1 "
                   "(expanded) or of as many rows: with batch_noise 'auto' every row equals sampling that person "
                   "alone with the same seed. A connected batch adds all its rows, so batches chain like Image Batch.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["identity batch", "several people", "batch faces", "face id batch"]
    RETURN_TYPES = ("INFINITEID_IDENTITY",)
    RETURN_NAMES = ("identity",)
    FUNCTION = "batch"

    @classmethod
    def INPUT_TYPES(cls):
        sockets = {f"identity_{i}": ("INFINITEID_IDENTITY", {"tooltip": f"Optional row(s) {i}: another person."})
                   for i in range(3, MAX_BATCH + 1)}
        return {
            "required": {
                "identity_1": ("INFINITEID_IDENTITY", {"tooltip": "First row(s): a person (from InfiniteID Encode "
                                                                  "or Load Identity), or a batch."}),
                "identity_2": ("INFINITEID_IDENTITY", {"tooltip": "Next row(s): same adapter and token shape as "
                                                                  "identity_1."}),
            },
            "optional": sockets,
        }

    @checked_inputs(BATCH)
    def batch(self, identity_1, identity_2, **more):
        with node_error(BATCH):
            named = [("identity_1", identity_1), ("identity_2", identity_2)]
            named += [(f"identity_{i}", more[f"identity_{i}"]) for i in range(3, MAX_BATCH + 1)
                      if more.get(f"identity_{i}") is not None]
            return (batch([identity for _, identity in named], [name for name, _ in named]),)


NODE_CLASS_MAPPINGS = {MIX: InfiniteIDMix, INTERPOLATE: InfiniteIDInterpolate, BATCH: InfiniteIDIdentityBatch}
NODE_DISPLAY_NAME_MAPPINGS = {MIX: "InfiniteID Mix", INTERPOLATE: "InfiniteID Interpolate",
                              BATCH: "InfiniteID Identity Batch"}
