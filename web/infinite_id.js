// Link and socket colours for the pack's types, in the 2024 editor and the current one.
//
// Why accessors: the current editor's colour palette resets every known data type's colour
// to "" and then applies the palette's own (Object.assign) on start-up and on every theme
// change, which would wipe colours set once. An accessor keeps ours unless a palette
// gives the type a real colour, so a user's palette still wins.
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

app.registerExtension({
  name: "InfiniteID.TypeColours",
  async setup() {
    applyColours();
  },
});
