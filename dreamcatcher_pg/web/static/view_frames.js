// Time travel: the timeline, a frame slider (and ← →), the frame's facts, and the state right
// after the frame (state_table.js). New frames move the slider's end; with "follow", the view too.

import { api } from "./api.js";
import { renderTimeline } from "./chart.js";
import { clear, debounce, fmtInt, fmtMs, fmtTime, h } from "./dom.js";
import { StateTable } from "./state_table.js";

const WINDOW = 300; // frames in the timeline around the selected one (unless "whole history")

class FramesView {
  mount(root, ctx) {
    this.ctx = ctx;
    this.frame = null;
    this.info = null;
    this.window = null;
    this.slider = h("input", { type: "range", id: "frame-slider", min: 0, max: 0, step: 1, value: 0,
      "aria-label": "frame" });
    this.label = h("output", { id: "frame-label" }, "–");
    this.follow = h("input", { type: "checkbox", id: "follow", checked: true });
    this.whole = h("input", { type: "checkbox", id: "whole-history" });
    this.timeline = h("div", { id: "timeline", class: "chart" });
    this.facts = h("div", { id: "frame-info", class: "facts" });
    this.heading = h("h2", {}, "State right after frame ", h("span", { id: "state-frame" }, "–"));
    const tableRoot = h("div");
    clear(root,
      h("div", { class: "frame-bar" },
        h("button", { id: "prev-frame", title: "previous merged frame (←)", onclick: () => this.step(-1) }, "◀"),
        this.slider,
        h("button", { id: "next-frame", title: "next merged frame (→)", onclick: () => this.step(1) }, "▶"),
        h("span", { class: "frame-name" }, "frame ", this.label),
        h("label", {}, this.follow, " follow new frames"),
        h("label", {}, this.whole, " whole history")),
      this.timeline, this.facts, this.heading, tableRoot);
    this.table = new StateTable(tableRoot, ctx);
    const settle = debounce((value) => this.goto(value), 150);
    this.slider.addEventListener("input", () => {
      this.label.textContent = fmtInt(this.slider.value);
      settle(Number(this.slider.value));
    });
    this.whole.addEventListener("change", () => { this.window = null; this.drawTimeline(); });
    window.addEventListener("resize", debounce(() => { if (this.frame !== null) this.drawTimeline(); }, 250));
  }

  goto(frame) {
    const p = this.ctx.params;
    this.ctx.go("frames", { frame, kind: p.kind, key: p.key, field: p.field, value: p.value }, { replace: true });
  }

  step(direction) {
    if (!this.info) return;
    const target = direction < 0 ? this.info.prev_merged : this.info.next_merged;
    if (target !== null && target !== undefined) this.goto(target);
  }

  async show(params, ctx) {
    const doc = ctx.worldDoc;
    if (ctx.lastMerged === null) {
      clear(this.facts, h("p", { class: "empty" }, "No frame of this world is merged yet."));
      return;
    }
    const frame = params.frame !== undefined ? Number(params.frame) : ctx.lastMerged;
    this.frame = frame;
    this.slider.min = String(doc.first_frame ?? 0);
    this.slider.max = String(ctx.lastMerged);
    this.slider.value = String(frame);
    this.label.textContent = fmtInt(frame);
    this.heading.lastChild.textContent = fmtInt(frame);
    await Promise.all([
      this.loadFacts(frame),
      this.drawTimeline(),
      this.table.show({ frame, kind: params.kind, key: params.key, field: params.field, value: params.value }),
    ]);
  }

  async loadFacts(frame) {
    try {
      this.info = await api("frame", { world: this.ctx.world, frame });
    } catch (err) {
      this.ctx.error(this.facts, err);
      return;
    }
    const f = this.info;
    const fact = (name, value) => h("span", { class: "fact" }, h("b", {}, name), " ", value);
    clear(this.facts, f.exists
      ? [fact("status", f.status), fact("deltas", fmtInt(f.delta_count)), fact("close→merged", fmtMs(f.close_to_merged_ms)),
        fact("merge", fmtMs(f.merge_ms)), fact("merged at", fmtTime(f.merged_at)), fact("state hash", f.state_hash ?? "–"),
        f.stats ? fact("changes", fmtInt(f.stats.changes)) : null,
        f.stats && f.stats.quarantined ? fact("quarantined", fmtInt(f.stats.quarantined)) : null]
      : [h("span", { class: "muted" }, `no frame ${fmtInt(frame)} in this world: the state is the one after frame `
        + `${f.prev_merged ?? "–"}`)]);
  }

  async drawTimeline() {
    const doc = this.ctx.worldDoc;
    const first = doc.first_frame ?? 0, last = doc.last_frame ?? 0;
    let from = first, to = last;
    if (!this.whole.checked && last - first > WINDOW) {
      from = Math.max(first, Math.min(this.frame - WINDOW / 2, last - WINDOW));
      to = from + WINDOW;
    }
    try {
      const timeline = await api("timeline", { world: this.ctx.world, from, to, points: WINDOW });
      this.window = { from, to };
      renderTimeline(this.timeline, timeline, this.frame, (frame) => {
        this.goto(Math.min(frame, this.ctx.lastMerged));
      });
    } catch (err) {
      this.ctx.error(this.timeline, err);
    }
  }

  onMerged(frame, previous) {
    this.slider.max = String(frame);
    if (this.follow.checked && (this.frame === previous || this.frame === null)) {
      this.goto(frame);
    } else {
      this.drawTimeline();
    }
  }
}

export const view = new FramesView();
