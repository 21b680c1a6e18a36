// Every world: frames open / closed / merged, merge lag, the leader merger, quarantine, late attempts.

import { api } from "./api.js";
import { badge, clear, fmtAge, fmtInt, h } from "./dom.js";

class WorldsView {
  mount(root, ctx) {
    this.ctx = ctx;
    this.body = h("tbody");
    this.error = h("div");
    clear(root, h("h2", {}, "Worlds"), this.error,
      h("table", { id: "worlds-table", class: "data" }, h("thead", {}, h("tr", {},
        ["world", "open", "closed", "merged", "last merged", "merge lag", "leader", "quarantined", "late attempts"]
          .map((name) => h("th", {}, name)))), this.body));
  }

  async show() {
    await this.refresh();
  }

  async refresh() {
    let doc;
    try {
      doc = await api("worlds");
    } catch (err) {
      this.ctx.error(this.error, err);
      return;
    }
    clear(this.error);
    clear(this.body, doc.worlds.map((w) => {
      const link = (view, text) => h("a", { href: `#/${view}?${new URLSearchParams({ world: w.world })}` }, text);
      const leader = w.leader
        ? [w.leader.holder, " ", w.leader.holds_lock ? badge("leading", "added") : badge("gone", "removed"),
          h("span", { class: "muted" }, ` heartbeat ${fmtAge(w.leader.heartbeat_age_seconds)}`)]
        : h("span", { class: "muted" }, "none");
      const lag = w.merge_lag.frames
        ? `${fmtInt(w.merge_lag.frames)} frames, oldest closed ${fmtAge(w.merge_lag.seconds)}` : "none";
      return h("tr", { dataset: { world: w.world } },
        h("td", {}, link("frames", w.world)),
        h("td", { class: "num" }, fmtInt(w.frames.open)),
        h("td", { class: "num" }, fmtInt(w.frames.closed)),
        h("td", { class: "num" }, fmtInt(w.frames.merged)),
        h("td", { class: "num" }, w.last_merged === null ? "–" : fmtInt(w.last_merged)),
        h("td", {}, lag),
        h("td", {}, leader),
        h("td", { class: "num" }, link("quarantine", fmtInt(w.quarantined))),
        h("td", { class: "num" }, link("late", fmtInt(w.late_attempts))));
    }));
  }

  onMerged() {
    this.refresh();
  }
}

export const view = new WorldsView();
