"""Every shipped workflow and blueprint in the current editor, on both renderers (headless Chromium).

New installs of the current frontend draw nodes with Vue ("Nodes 2.0",
``Comfy.VueNodes.Enabled``), where some LiteGraph hooks never run; older ones on the
canvas. For the host's pinned frontend (1.49.6) and the newer one (1.58.1), each with
Vue nodes off and on, this opens every shipped workflow, every blueprint file and a
workflow built from each blueprint, and reports: node types the editor does not know
(inside subgraphs too), nodes drawn with errors, a missing-nodes dialog, Vue nodes not
drawn, the editor's "Queue" conversion differing from the runner's, and console errors
or warnings raised from the pack's own script (``web/infinite_id.js``). It checks the
pack's link colours (canvas) and socket colours (Vue), that Apply keeps its expert inputs
behind "Show advanced inputs" on Vue nodes, that the node library's search finds the
blueprints and the setup nodes by the words people use for other face packs, that every
help page is served where the editor looks for it, and that a blueprint added from the
search expands into its nodes. Screenshots of both renderers on frontend 1.58.1 go to
``docs/screenshots/vue/`` and ``docs/screenshots/canvas/`` (the pinned editor's canvas
ones are test_editor.py's, in ``docs/screenshots/``).

Current hosts only (the 2024 editor has neither renderer switch nor blueprints); skips
without Chromium, like test_editor.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from blueprint_cases import CASES, ui_workflow
from comfy_server import PACK_NAME
from test_editor import (
    MISSING_WORDS,
    NEWER_FRONTEND,
    NEWER_FRONTEND_ROOT,
    TYPE_COLOURS,
    _is_current_host,
    _same,
    _save_small_png,
    _wait_for_app,
    editor_session,
)

from infinite_id.workflow_io.blueprints import blueprint_names, blueprint_path
from infinite_id.workflow_io.shipped import PACK_ROOT, SHIPPED, ui_paths
from infinite_id.workflow_io.ui_to_api import ui_to_api

SCREENSHOTS = PACK_ROOT / "docs" / "screenshots"  # vue/ and canvas/ (frontend 1.58.1)
# Where the editor looks for a custom node's help page (NodeHelpService): WEB_DIRECTORY/docs/<node>.md.
HELP_URL = "/extensions/{pack}/docs/{node}.md"
# query -> a result that must be among the first five (other packs' names are rare words), or listed at all
# (common words, which core nodes also match)
SEARCHES = {"pulid": ("InfiniteID Apply", 5), "instantid": ("InfiniteID Apply", 5),
            "ipadapter face": ("InfiniteID Apply", 5), "face id": ("InfiniteID Apply", None),
            "identity": ("InfiniteID Encode", None), "InfiniteID One Photo": ("InfiniteID One Photo", 1),
            "InfiniteID Two People": ("InfiniteID Two People", 1)}

# Console errors/warnings and uncaught errors, with the stack that raised them (the pack's
# script is named in it), recorded from the first line of every page.
_CONSOLE_HOOK = """
window.__iidConsole = [];
for (const level of ['error', 'warn']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    window.__iidConsole.push({level, text: args.map(a => String((a && a.stack) || a)).join(' '),
                              stack: String(new Error().stack)});
    original(...args);
  };
}
window.addEventListener('error', e => window.__iidConsole.push(
  {level: 'uncaught', text: String(e.message), stack: String((e.error && e.error.stack) || e.filename)}));
window.addEventListener('unhandledrejection', e => window.__iidConsole.push(
  {level: 'rejection', text: String(e.reason), stack: String((e.reason && e.reason.stack) || '')}));
"""

_SET_VUE_JS = """
const [on, done] = arguments;
app.ui.settings.setSettingValueAsync('Comfy.VueNodes.Enabled', on).then(() => done(true), e => done(String(e)));
"""

_OPEN_JS = """
const [wf, name, types, done] = arguments;
(async () => {
  try {
    await app.loadGraphData(wf, true, true, name);
    await new Promise(r => setTimeout(r, 1200));
    const graph = app.graph;
    const inner = [];
    for (const node of graph._nodes) {
      if (node.subgraph) for (const n of node.subgraph._nodes || node.subgraph.nodes || []) inner.push(n);
    }
    const all = [...graph._nodes, ...inner];
    const unknown = all.filter(n => !n.subgraph && !LiteGraph.registered_node_types[n.type]).map(n => n.type);
    const errors = all.filter(n => n.has_errors).map(n => `${n.id} ${n.type}`);
    const dialogs = [...document.querySelectorAll('.comfy-modal, .p-dialog, [role=dialog]')]
      .filter(e => e.getClientRects().length > 0 && getComputedStyle(e).display !== 'none')
      .map(e => e.innerText.slice(0, 300));
    const vueNodes = document.querySelectorAll('[data-node-id]').length;
    const prompt = JSON.parse(JSON.stringify((await app.graphToPrompt()).output));
    // Socket dots (Vue) of the pack's types: the colour the browser computes for them.
    const dots = {};
    for (const node of graph._nodes) {
      (node.outputs || []).forEach((slot, i) => {
        if (!types.includes(slot.type) || dots[slot.type]) return;
        const el = document.querySelector(`[data-node-id="${node.id}"] [data-slot-key$="-out-${i}"]`);
        if (el) dots[slot.type] = getComputedStyle(el).backgroundColor;
      });
    }
    const links = Object.fromEntries(types.map(t => [t, LGraphCanvas.link_type_colors[t]]));
    // Blueprint nodes: the widgets they show against the inner widgets they promote.
    const promoted = graph._nodes.filter(n => n.subgraph).map(n => ({
      shown: (n.widgets || []).map(w => w.label || w.name),
      wanted: ((n.properties || {}).proxyWidgets || []).map(p => p[1])}));
    app.canvas.setDirty(true, true);
    done({unknown, errors, dialogs, vueNodes, graphNodes: graph._nodes.length, prompt, dots, links, promoted});
  } catch (e) { done({error: String((e && e.stack) || e)}); }
})();
"""

_APPLY_JS = """
const done = arguments[0];
(async () => {
  app.graph.clear();
  const node = LiteGraph.createNode('InfiniteIDApply');
  node.pos = [300, 150];
  app.graph.add(node);
  await new Promise(r => setTimeout(r, 800));
  const el = document.querySelector(`[data-node-id="${node.id}"]`);
  const text = el ? el.innerText : null;
  const button = el && el.querySelector('[data-testid=advanced-inputs-button]');
  if (button) { button.click(); await new Promise(r => setTimeout(r, 600)); }
  done({text, button: button ? button.innerText : null, after: el ? el.innerText : null});
})();
"""

_SEARCH_JS = """
const [query, add, done] = arguments;
(async () => {
  try {
    const before = app.graph._nodes.length;
    await app.extensionManager.command.execute('Workspace.SearchBox.Toggle');
    await new Promise(r => setTimeout(r, 1000));
    const input = [...document.querySelectorAll('input')].find(
      i => i.getClientRects().length && /add a node|search/i.test(i.placeholder || ''));
    if (!input) { done({error: 'no node search box'}); return; }
    input.focus();
    input.value = query;
    input.dispatchEvent(new Event('input', {bubbles: true}));
    await new Promise(r => setTimeout(r, 1500));
    const box = input.closest('[role=dialog]') || document.body;
    const items = [...box.querySelectorAll('[role=option], li')].filter(e => e.getClientRects().length)
      .map(e => e.innerText.replace(/\\s+/g, ' ').trim().slice(0, 160));
    let added = null;
    if (add) {
      input.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', code: 'Enter', bubbles: true}));
      await new Promise(r => setTimeout(r, 1500));
      const node = app.graph._nodes.length > before ? app.graph._nodes[app.graph._nodes.length - 1] : null;
      if (node && node.subgraph) {
        const inside = (node.subgraph._nodes || node.subgraph.nodes).map(n => n.type).sort();
        app.graph.unpackSubgraph(node);
        await new Promise(r => setTimeout(r, 500));
        added = {title: node.title, inside, after: app.graph._nodes.map(n => n.type).sort()};
      } else {
        added = {title: node && node.title, inside: null};
      }
    } else {
      document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}));
      input.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}));
    }
    done({items, added});
  } catch (e) { done({error: String((e && e.stack) || e)}); }
})();
"""


@pytest.fixture(scope="module", params=["pinned", NEWER_FRONTEND])
def frontend(request, host_info):
    if not _is_current_host(host_info.path):
        pytest.skip("the 2024 tree's editor has no Vue renderer and no blueprints")
    if request.param != "pinned" and not (NEWER_FRONTEND_ROOT / "index.html").is_file():
        pytest.skip(f"frontend {request.param} is not installed at {NEWER_FRONTEND_ROOT} (scripts/bootstrap.sh)")
    return request.param


@pytest.fixture(scope="module")
def browser(host_info, frontend, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"renderers-{frontend}")
    with editor_session(host_info.path, base, frontend, script_timeout=90, on_new_document=_CONSOLE_HOOK) as session:
        yield session


def _switch(driver, vue: bool) -> None:
    """Set the renderer as a user does in the settings, and reload the editor with it."""
    assert driver.execute_async_script(_SET_VUE_JS, vue) is True
    driver.refresh()
    _wait_for_app(driver)


def _pack_console_errors(driver) -> list[dict]:
    entries = driver.execute_script("return window.__iidConsole || []")
    return [e for e in entries if f"/extensions/{PACK_NAME}/" in e["stack"] or f"/extensions/{PACK_NAME}/" in e["text"]
            or "InfiniteID" in e["text"]]


def _documents() -> dict[str, dict]:
    """What the editor must open: shipped workflows, blueprint files, workflows built from each blueprint."""
    import nodes

    docs = {name: json.loads(ui_paths(name)[0].read_text()) for name in SHIPPED}
    for name in blueprint_names():
        docs[f"blueprint {name}"] = json.loads(blueprint_path(name).read_text())
    for name, case in CASES.items():
        docs[f"{case.workflow} with {name}"] = ui_workflow(case, nodes.NODE_CLASS_MAPPINGS)
    return docs


def _slug(name: str) -> str:
    return name.lower().replace("infiniteid ", "").replace(" ", "_")


@pytest.mark.parametrize("vue", [False, True], ids=["canvas", "vue"])
def test_every_workflow_and_blueprint_opens_on_both_renderers(browser, frontend, vue):
    driver, _ = browser
    _switch(driver, vue)
    assert driver.execute_script("return app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled')") is vue
    assert driver.execute_script("return app.extensions.some(e => e.name === 'InfiniteID.TypeColours')"), \
        "the pack's script (web/infinite_id.js) did not load"
    problems: list[str] = []
    for name, workflow in _documents().items():
        result = driver.execute_async_script(_OPEN_JS, workflow, name, list(TYPE_COLOURS))
        if "error" in result:
            problems.append(f"{name}: {result['error'][:500]}")
            continue
        problems += [f"{name}: unknown node type {t}" for t in result["unknown"]]
        problems += [f"{name}: node drawn with errors: {e}" for e in result["errors"]]
        problems += [f"{name}: dialog {d!r}" for d in result["dialogs"] if any(w in d.lower() for w in MISSING_WORDS)]
        if vue and result["vueNodes"] < result["graphNodes"]:
            problems.append(f"{name}: {result['vueNodes']} of {result['graphNodes']} nodes drawn as Vue nodes")
        for node in result["promoted"]:
            if not all(any(w in shown for shown in node["shown"]) for w in node["wanted"]):
                problems.append(f"{name}: blueprint node shows {node['shown']}, promotes {node['wanted']}")
        if result["links"] != TYPE_COLOURS:
            problems.append(f"{name}: link colours {result['links']}")
        if vue:
            want = {t: _rgb(c) for t, c in TYPE_COLOURS.items() if t in result["dots"]}
            if not result["dots"] or result["dots"] != want:
                problems.append(f"{name}: Vue socket colours {result['dots']} (want {want})")
        if not name.startswith("blueprint "):
            expected = ui_to_api(workflow)
            got = result["prompt"]
            if sorted(got) != sorted(expected) or not all(
                    got[k]["class_type"] == v["class_type"] and _same_inputs(got[k]["inputs"], v["inputs"])
                    for k, v in expected.items()):
                problems.append(f"{name}: the editor queues another prompt than the runner: "
                                f"{json.dumps(got)[:600]}")
        if frontend == NEWER_FRONTEND:
            time.sleep(0.3)
            folder = SCREENSHOTS / ("vue" if vue else "canvas")
            folder.mkdir(parents=True, exist_ok=True)
            _save_small_png(driver.get_screenshot_as_png(), folder / f"{_slug(name)}.png")
    problems += [f"console {e['level']} from the pack's script: {e['text'][:300]}" for e in
                 _pack_console_errors(driver)]
    assert not problems, "\n".join(problems)


def _same_inputs(got: dict, want: dict) -> bool:
    extra = {k for k in got if k not in want and k != "upload"}  # the editor also sends LoadImage's button
    return not extra and all(k in got and _same(got[k], v) for k, v in want.items())


def _rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_apply_shows_its_essentials_on_vue_nodes(browser, frontend):
    """Vue nodes hide the advanced inputs behind the node's own "Show advanced inputs" button."""
    driver, _ = browser
    _switch(driver, True)
    result = driver.execute_async_script(_APPLY_JS)
    assert result["text"] is not None, "InfiniteID Apply was not drawn as a Vue node"
    assert "weight" in result["text"] and "adain" in result["text"]
    for expert in ("attention_mode", "cross_attention_merge", "mix_end_percent", "blocks", "lora_strength"):
        assert expert not in result["text"], f"{expert} is shown before 'Show advanced inputs'"
        assert expert in result["after"], f"{expert} is not shown after 'Show advanced inputs'"
    assert result["button"] and "advanced" in result["button"].lower()
    if frontend == NEWER_FRONTEND:
        _save_small_png(driver.get_screenshot_as_png(), SCREENSHOTS / "vue" / "apply_advanced_inputs.png")


def test_search_finds_the_pack_and_blueprints_expand(browser, frontend):
    """The node search (the library's index) finds the setup by other packs' words and lists the blueprints;
    a blueprint added from it is a subgraph of the pack's nodes, which unpacks into them."""
    driver, _ = browser
    _switch(driver, False)
    for query, (wanted, within) in SEARCHES.items():
        result = driver.execute_async_script(_SEARCH_JS, query, False)
        assert "error" not in result, result["error"]
        assert any(item.startswith(wanted) for item in result["items"][:within]), (query, result["items"])
        driver.execute_script("document.activeElement && document.activeElement.blur()")
        _switch(driver, False)
    result = driver.execute_async_script(_SEARCH_JS, "InfiniteID One Photo", True)
    assert "error" not in result, result["error"]
    added = result["added"]
    assert added["inside"] == sorted(["CLIPVisionLoader", "InfiniteIDAdapterLoader", "InfiniteIDApply",
                                      "InfiniteIDEncode", "InfiniteIDFaceAnalysisLoader"]), added
    assert set(added["inside"]) <= set(added["after"]), added


def test_help_pages_are_served_where_the_editor_looks(browser):
    import urllib.request

    import infinite_id

    _, url = browser
    # The pack's own nodes: the host's mapping also holds what earlier tests registered.
    ours = list(infinite_id.NODE_CLASS_MAPPINGS)
    assert len(ours) == 15
    for node in ours:
        with urllib.request.urlopen(url + HELP_URL.format(pack=PACK_NAME, node=node), timeout=30) as resp:
            text = resp.read().decode()
        assert text == (PACK_ROOT / "web" / "docs" / f"{node}.md").read_text(), node
    assert Path(PACK_ROOT / "web" / "docs").is_dir()
