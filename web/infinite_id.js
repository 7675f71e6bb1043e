// Link and socket colours for the pack's types, in the 2024 editor and the current one, on
// both of the current editor's renderers (the canvas and Vue nodes, "Nodes 2.0").
//
// Why accessors: the current editor's colour palette resets every known data type's colour
// to "" and then applies the palette's own (Object.assign) on start-up and on every theme
// change, which would wipe colours set once. An accessor keeps ours unless a palette
// gives the type a real colour, so a user's palette still wins.
//
// Why a style sheet for Vue nodes: their socket dots are coloured with the CSS variable
// --color-datatype-<TYPE>, which the palette writes as an inline style of <html> (and
// removes for types it has no colour for). A rule in a style sheet survives that removal,
// and an inline colour from a user's palette still wins over it.
import { app } from "../../scripts/app.js";

export const TYPE_COLOURS = {
  INFINITEID_IDENTITY: "#E8A33D",  // identities: Encode, Mix, Interpolate, Load Identity
  INFINITEID_ADAPTER: "#B07CE8",   // the adapter from InfiniteID Adapter Loader
  FACEANALYSIS: "#3CB4A0",         // insightface (the type other face packs share)
};

function keepColour(table, type, colour) {
  if (!table) return;
  let current = colour;
  Object.defineProperty(table, type, {
    configurable: true,
    enumerable: true,
    get: () => current,
    set: (value) => { if (value) current = value; },
  });
}

function applyColours() {
  const canvasClass = window.LGraphCanvas;
  for (const [type, colour] of Object.entries(TYPE_COLOURS)) {
    keepColour(canvasClass && canvasClass.link_type_colors, type, colour);
    keepColour(app.canvas && app.canvas.default_connection_color_byType, type, colour);
  }
  if (app.canvas && app.canvas.setDirty) app.canvas.setDirty(true, true);
}

function addVueSocketColours() {
  if (document.getElementById("infinite-id-type-colours")) return;
  const style = document.createElement("style");
  style.id = "infinite-id-type-colours";
  style.textContent = ":root {\n" + Object.entries(TYPE_COLOURS)
    .map(([type, colour]) => `  --color-datatype-${type}: ${colour};`).join("\n") + "\n}";
  document.head.appendChild(style);
}

app.registerExtension({
  name: "InfiniteID.TypeColours",
  async setup() {
    applyColours();
    addVueSocketColours();
  },
});
