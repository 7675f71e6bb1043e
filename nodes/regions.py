"""``InfiniteIDRegions`` and ``InfiniteIDFaceMasks``: several people in one picture.

The regional identity is built in ``identity/regional.py``; how masks act during sampling
is in ``model_patch/region_grids.py``; README "Several people in one picture" shows a layout.
"""
from __future__ import annotations

import logging

from ..host.errors import node_error
from ..identity.face_masks import face_masks
from ..identity.regional import MAX_REGIONS, regional_identity
from ..identity.types import check_identity
from .inputs import checked_inputs

log = logging.getLogger(__name__)

REGIONS = "InfiniteIDRegions"
FACE_MASKS = "InfiniteIDFaceMasks"


def _weight(tooltip: str) -> tuple:
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05, "tooltip": tooltip})


class InfiniteIDRegions:
    DESCRIPTION = ("Several people in one picture: each identity acts only inside its mask (its image "
                   "cross-attention is confined there); outside every mask the prompt alone draws. Connect up to four "
                   "identity + mask pairs; the output goes to InfiniteID Apply like any identity. Masks of any size "
                   "are stretched to the image.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["two people", "multiple people", "regional identity", "regional face id", "group photo",
                      "masks faces"]
    RETURN_TYPES = ("INFINITEID_IDENTITY",)
    RETURN_NAMES = ("identity",)
    FUNCTION = "regions"

    @classmethod
    def INPUT_TYPES(cls):
        optional = {}
        for i in range(2, MAX_REGIONS + 1):
            optional[f"identity_{i}"] = ("INFINITEID_IDENTITY", {"tooltip": f"Person {i} (optional)."})
            optional[f"mask_{i}"] = ("MASK", {"tooltip": f"Where person {i} goes (1 inside)."})
            optional[f"weight_{i}"] = _weight(f"Strength of person {i}.")
        optional["feather"] = ("INT", {"default": 0, "min": 0, "max": 256, "step": 1,
                                       "tooltip": "Soften every mask's edge by about this many pixels (of the mask). "
                                                  "Where masks overlap, the people share the strength in proportion."})
        optional["regions"] = ("INFINITEID_IDENTITY", {
            "tooltip": "Optional: an earlier InfiniteID Regions output to add these people to (four people in all)."})
        return {"required": {
            "identity_1": ("INFINITEID_IDENTITY", {"tooltip": "Person 1 (from InfiniteID Encode, Load Identity, Mix)."}),
            "mask_1": ("MASK", {"tooltip": "Where person 1 goes: 1 inside, 0 outside (SolidMask + MaskComposite, "
                                           "InfiniteID Face Masks, or a painted mask). Stretched to the image."}),
            "weight_1": _weight("Strength of person 1 (times InfiniteID Apply's weight)."),
        }, "optional": optional}

    @checked_inputs(REGIONS)
    def regions(self, identity_1, mask_1, weight_1, feather=0, regions=None, **more):
        with node_error(REGIONS):
            people = [("identity_1", identity_1, mask_1, weight_1)]
            for i in range(2, MAX_REGIONS + 1):
                identity, mask = more.get(f"identity_{i}"), more.get(f"mask_{i}")
                if identity is None and mask is None:
                    continue
                if identity is None or mask is None:
                    missing, given = (f"identity_{i}", f"mask_{i}") if identity is None else (f"mask_{i}",
                                                                                             f"identity_{i}")
                    raise ValueError(f"{missing}: {given} is connected but {missing} is not; connect both (a person "
                                     "and where they go) or neither")
                people.append((f"identity_{i}", identity, mask, more.get(f"weight_{i}", 1.0)))
            for name, identity, _, _ in people:
                check_identity(identity, name)
            if regions is not None:
                check_identity(regions, "regions")
            result = regional_identity(people, base=regions, feather_pixels=feather, allow_empty=False)
            log.info("%s: %d people; coverage %s", REGIONS, len(result.regions),
                     ", ".join(f"{r.name} {float(r.mask.mean()):.0%}" for r in result.regions))
            return (result,)


class InfiniteIDFaceMasks:
    DESCRIPTION = ("Masks for InfiniteID Regions from the faces in a layout image (a group photo, a sketch, an "
                   "earlier render): mask_1 covers the leftmost face, mask_2 the next, ... each box grown to hold the "
                   "head. Use an image with the aspect of the picture you generate.")
    CATEGORY = "InfiniteID"
    SEARCH_ALIASES = ["face masks", "face mask", "face detection mask", "masks from faces", "face bbox"]
    RETURN_TYPES = ("MASK",) * MAX_REGIONS + ("INT",)
    RETURN_NAMES = tuple(f"mask_{i}" for i in range(1, MAX_REGIONS + 1)) + ("faces",)
    FUNCTION = "masks"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACEANALYSIS", {"tooltip": "From 'InfiniteID Face Analysis Loader'."}),
            "image": ("IMAGE", {"tooltip": "The layout: faces where the people should be."}),
            "grow": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 8.0, "step": 0.1,
                               "tooltip": "Each face box is scaled by this about its centre (2: head and hair; "
                                          "larger: shoulders too)."}),
        }}

    @checked_inputs(FACE_MASKS)
    def masks(self, face_analysis, image, grow):
        with node_error(FACE_MASKS):
            masks, found = face_masks(face_analysis, image, MAX_REGIONS, grow)
            log.info("%s: faces per image %s", FACE_MASKS, found)
            return (*masks, max(found))


NODE_CLASS_MAPPINGS = {REGIONS: InfiniteIDRegions, FACE_MASKS: InfiniteIDFaceMasks}
NODE_DISPLAY_NAME_MAPPINGS = {REGIONS: "InfiniteID Regions", FACE_MASKS: "InfiniteID Face Masks"}
