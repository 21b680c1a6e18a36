// The inspector's page: the router (location.hash = #/VIEW?world=W&...), the world picker, the
// live feed, and the views (one module each, one <section> each).

import { api, ApiError, watchFrames } from "./api.js";
import { $, clear, fmtInt, h } from "./dom.js";
import * as diff from "./view_diff.js";
import * as entity from "./view_entity.js";
import * as frames from "./view_frames.js";
import * as logs from "./view_logs.js";
import * as worlds from "./view_worlds.js";

const VIEWS = {
  worlds: worlds.view,
  frames: frames.view,
  diff: diff.view,
  entity: entity.view,
  quarantine: logs.quarantine,
  late: logs.late,
};

// What every view shares.
export const ctx = {
  meta: null,
  world: null,
  worldDoc: null, // /api/world: frames, kinds, last merged
  lastMerged: null,
  view: null,
  params: {},
  // Go to a view; `replace` keeps the browser history short (slider moves).
  go(view, params = {}, { replace = false } = {}) {
    const query = new URLSearchParams({ world: ctx.world ?? "", ...clean(params) });
    const hash = `#/${view}?${query}`;
    if (replace) {
      history.replaceState(null, "", hash);
      route();
    } else if (location.hash === hash) {
      route();
    } else {
      location.hash = hash;
    }
  },
  error(where, err) {
    const text = err instanceof ApiError ? `${err.message}` : `${err}`;
    clear(where, h("p", { class: "error", role: "alert" }, text));
  },
  toast(text) {
    const box = $("#toasts");
    const note = h("div", { class: "toast" }, text);
    box.append(note);
    setTimeout(() => note.remove(), 4000);
  },
};

function clean(params) {
  return Object.fromEntries(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== ""));
}

function parseHash() {
  const match = location.hash.match(/^#\/(\w+)(?:\?(.*))?$/);
  const view = match && VIEWS[match[1]] ? match[1] : "frames";
  return { view, params: Object.fromEntries(new URLSearchParams(match ? match[2] ?? "" : "")) };
}

let unwatch = null;

async function selectWorld(world) {
  ctx.world = world;
  ctx.worldDoc = await api("world", { world });
  ctx.lastMerged = ctx.worldDoc.last_merged;
  $("#world").value = world;
  showLatest();
  if (unwatch) unwatch();
  unwatch = watchFrames(world, onMerged, (state) => {
    const live = $("#live");
    live.className = `live ${state}`;
    live.textContent = state === "live" ? "● live" : "○ reconnecting";
  });
}

function showLatest() {
  $("#latest-frame").textContent = ctx.lastMerged === null ? "none yet" : fmtInt(ctx.lastMerged);
}

async function onMerged(frame) {
  if (ctx.lastMerged !== null && frame <= ctx.lastMerged) return;
  const previous = ctx.lastMerged;
  ctx.lastMerged = frame;
  try {
    ctx.worldDoc = await api("world", { world: ctx.world });
  } catch {
    /* the next event refreshes it */
  }
  showLatest();
  if (previous !== null) ctx.toast(`frame ${frame} merged`);
  const view = VIEWS[ctx.view];
  if (view && view.onMerged) view.onMerged(frame, previous);
}

async function route() {
  const { view, params } = parseHash();
  try {
    if (!ctx.world || (params.world && params.world !== ctx.world)) {
      let world = params.world || ctx.meta.default_world;
      if (!world) {
        const list = await api("worlds");
        world = list.worlds.length ? list.worlds[0].world : null;
      }
      if (!world) {
        clear($("#main-error"), h("p", { class: "empty" },
          "No world has frames yet. Write a delta (or run `dreamcatcher demo`), then reload."));
        return;
      }
      await selectWorld(world);
    }
    clear($("#main-error"));
  } catch (err) {
    ctx.error($("#main-error"), err);
    return;
  }
  ctx.view = view;
  ctx.params = params;
  for (const [name, v] of Object.entries(VIEWS)) {
    $(`#view-${name}`).hidden = name !== view;
    const tab = $(`#tabs a[data-view="${name}"]`);
    tab.classList.toggle("active", name === view);
    tab.setAttribute("href", `#/${name}?${new URLSearchParams({ world: ctx.world })}`);
    if (name === view) v.show(params, ctx);
  }
}

async function fillWorlds() {
  const select = $("#world");
  const list = await api("worlds");
  clear(select, list.worlds.map((w) => h("option", { value: w.world }, w.world)));
  if (ctx.world) select.value = ctx.world;
  select.onchange = () => {
    ctx.world = null;
    location.hash = `#/${ctx.view ?? "frames"}?${new URLSearchParams({ world: select.value })}`;
  };
}

function keyboard(event) {
  const target = event.target;
  const typing = target instanceof HTMLElement
    && (["TEXTAREA", "SELECT"].includes(target.tagName)
      || (target.tagName === "INPUT" && target.type !== "range" && target.type !== "checkbox"));
  if (typing || event.altKey || event.ctrlKey || event.metaKey) return;
  const view = VIEWS[ctx.view];
  if ((event.key === "ArrowLeft" || event.key === "ArrowRight") && view && view.step) {
    event.preventDefault();
    view.step(event.key === "ArrowLeft" ? -1 : 1);
  }
}

async function start() {
  for (const [name, v] of Object.entries(VIEWS)) v.mount($(`#view-${name}`), ctx);
  try {
    ctx.meta = await api("meta");
    $("#session").textContent = `${ctx.meta.read_only ? "read-only" : "NOT read-only"} · role ${ctx.meta.role}`
      + ` · dreamcatcher ${ctx.meta.version}`;
    await fillWorlds();
  } catch (err) {
    ctx.error($("#main-error"), err);
    return;
  }
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", keyboard);
  await route();
  setInterval(() => { if (ctx.view === "worlds") VIEWS.worlds.refresh(); }, 5000);
}

start();
