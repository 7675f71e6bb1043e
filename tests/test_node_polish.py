"""Every public node explains itself: a description, and a tooltip on every input."""
import pytest

import infinite_id

NODES = sorted(infinite_id.NODE_CLASS_MAPPINGS.items())


@pytest.mark.parametrize("name,cls", NODES, ids=[n for n, _ in NODES])
def test_node_has_description_and_input_tooltips(name, cls):
    assert getattr(cls, "DESCRIPTION", "").strip(), f"{name} has no DESCRIPTION"
    assert cls.CATEGORY.startswith("InfiniteID")
    spec = cls.INPUT_TYPES()
    missing = [f"{section}.{input_name}"
               for section in ("required", "optional")
               for input_name, entry in spec.get(section, {}).items()
               if len(entry) < 2 or not isinstance(entry[1], dict) or not entry[1].get("tooltip")]
    assert not missing, f"{name}: inputs without a tooltip: {missing}"


def test_contract_node_names_are_registered():
    """DESIGN.md section 2: saved workflows depend on these names."""
    required = {"InfiniteIDFaceAnalysisLoader", "InfiniteIDAdapterLoader", "InfiniteIDEncode", "InfiniteIDMix",
                "InfiniteIDInterpolate", "InfiniteIDApply", "InfiniteIDSampler", "InfiniteIDGuider"}
    assert required <= set(infinite_id.NODE_CLASS_MAPPINGS)
