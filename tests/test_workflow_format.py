"""UI -> API conversion on hand-made graphs: the editor's cases the shipped files do not show.

Reroutes, bypassed and muted nodes, Notes, a Primitive driving a converted widget, saves
without the control_after_generate value and dict-style widget values, each as the
editor's own "Queue" would send them.
"""
from __future__ import annotations

import pytest

from infinite_id.workflow_io.ui_to_api import WidgetSlot, ui_to_api, widget_layout


def _node(nid, type_, widgets=(), inputs=(), outputs=(), mode=0, title=None):
    node = {"id": nid, "type": type_, "mode": mode, "widgets_values": list(widgets),
            "inputs": [{"name": n, "type": t, "link": link, **({"widget": {"name": n}} if w else {})}
                       for n, t, link, w in inputs],
            "outputs": [{"name": t, "type": t, "links": links} for t, links in outputs]}
    if title:
        node["title"] = title
    return node


def _graph():
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"],
             [4, 5, 0, 4, 1, "CONDITIONING"], [5, 6, 0, 4, 2, "CONDITIONING"], [6, 7, 0, 4, 3, "LATENT"],
             [7, 8, 0, 4, 4, "INT"], [8, 1, 1, 5, 0, "CLIP"], [9, 1, 1, 6, 0, "CLIP"]]
    nodes = [
        _node(1, "CheckpointLoaderSimple", ["x.safetensors"], outputs=[("MODEL", [1]), ("CLIP", [8, 9]), ("VAE", [])]),
        _node(2, "Reroute", inputs=[("", "*", 1, False)], outputs=[("MODEL", [2])]),
        _node(3, "LoraLoaderModelOnly", ["l.safetensors", 1.0], inputs=[("model", "MODEL", 2, False)],
              outputs=[("MODEL", [3])], mode=4),
        _node(4, "KSampler", [1, "randomize", 20, 7.0, "euler", "normal", 1.0], title="My sampler",
              inputs=[("model", "MODEL", 3, False), ("positive", "CONDITIONING", 4, False),
                      ("negative", "CONDITIONING", 5, False), ("latent_image", "LATENT", 6, False),
                      ("seed", "INT", 7, True)], outputs=[("LATENT", [])]),
        _node(5, "CLIPTextEncode", ["hello"], inputs=[("clip", "CLIP", 8, False)], outputs=[("CONDITIONING", [4])]),
        _node(6, "CLIPTextEncode", ["muted"], inputs=[("clip", "CLIP", 9, False)], outputs=[("CONDITIONING", [5])],
              mode=2),
        _node(7, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", [6])]),
        _node(8, "PrimitiveNode", [123, "fixed"], outputs=[("INT", [7])]),
        _node(9, "Note", ["a note"]),
        _node(10, "LoadImage", ["a.png", "image"], outputs=[("IMAGE", []), ("MASK", [])]),
    ]
    return {"nodes": nodes, "links": links, "last_node_id": 10, "last_link_id": 9, "version": 0.4}


def test_editor_cases_convert_as_the_editor_queues_them():
    prompt = ui_to_api(_graph())
    assert sorted(prompt, key=int) == ["1", "4", "5", "7", "10"]  # no reroute/bypassed/muted/primitive/note
    sampler = prompt["4"]
    assert sampler["_meta"]["title"] == "My sampler"
    assert sampler["inputs"] == {"model": ["1", 0], "positive": ["5", 0], "latent_image": ["7", 0], "seed": 123,
                                 "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                 "denoise": 1.0}
    assert prompt["5"]["inputs"] == {"text": "hello", "clip": ["1", 1]}
    assert prompt["10"]["inputs"] == {"image": "a.png"}
    assert prompt["7"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}


def test_old_saves_without_control_value_and_dict_values():
    graph = _graph()
    graph["nodes"][3]["widgets_values"] = [5, 20, 7.0, "euler", "normal", 1.0]
    graph["nodes"][3]["inputs"].pop()  # seed is a plain widget again
    graph["nodes"][6]["widgets_values"] = {"width": 32, "height": 48, "batch_size": 2}
    prompt = ui_to_api(graph)
    assert prompt["4"]["inputs"]["seed"] == 5 and prompt["4"]["inputs"]["steps"] == 20
    assert prompt["7"]["inputs"] == {"width": 32, "height": 48, "batch_size": 2}


def test_bypassed_node_without_matching_input_drops_the_link():
    graph = _graph()
    graph["nodes"][2]["inputs"][0]["type"] = "CLIP"  # nothing of type MODEL passes through
    assert "model" not in ui_to_api(graph)["4"]["inputs"]


def test_missing_node_types_are_all_named():
    graph = _graph()
    graph["nodes"][0]["type"] = "NotInstalledA"
    graph["nodes"][6]["type"] = "NotInstalledB"
    with pytest.raises(ValueError, match="NotInstalledA, NotInstalledB"):
        ui_to_api(graph)


def test_widget_layout_matches_the_editor():
    import nodes

    sampler = widget_layout(nodes.NODE_CLASS_MAPPINGS["InfiniteIDSampler"])
    assert [(s.name, s.kind) for s in sampler][:3] == [("seed", "input"), ("seed", "control"), ("steps", "input")]
    assert widget_layout(nodes.NODE_CLASS_MAPPINGS["LoadImage"])[-1] == WidgetSlot("upload", "upload")
    apply = [s.name for s in widget_layout(nodes.NODE_CLASS_MAPPINGS["InfiniteIDApply"])]
    assert apply[0] == "weight" and apply[-1] == "lora_strength"  # optional widgets come last
