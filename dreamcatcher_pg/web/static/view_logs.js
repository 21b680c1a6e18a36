// Quarantined items and late attempts: newest first, paged by id, each with its reason (or
// policy) and the original item (or payload) as it arrived.

import { api } from "./api.js";
import { clear, fmtInt, fmtTime, h, jsonBlock } from "./dom.js";

class LogView {
  constructor(name, title, columns, original) {
    this.name = name;
    this.title = title;
    this.columns = columns; // [[heading, row => cell]]
    this.original = original; // the row's JSON column
  }

  mount(root, ctx) {
    this.ctx = ctx;
    this.frame = h("input", { type: "number", min: 0, name: "frame", placeholder: "any" });
    const form = h("form", { class: "search" }, h("label", {}, "frame ", this.frame), h("button", { type: "submit" }, "Filter"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      ctx.go(this.name, { frame: this.frame.value });
    });
    this.body = h("tbody");
    this.error = h("div");
    this.status = h("div", { class: "muted" });
    this.more = h("button", { onclick: () => this.load(true) }, "older ▼");
    clear(root, h("h2", {}, this.title), form, this.status, this.error,
      h("table", { id: `${this.name}-table`, class: "data" },
        h("thead", {}, h("tr", {}, this.columns.map(([name]) => h("th", {}, name)), h("th", {}, this.original))),
        this.body),
      h("div", { class: "pager" }, this.more));
  }

  async show(params) {
    this.frame.value = params.frame ?? "";
    this.want = params.frame;
    this.before = null;
    this.count = 0;
    clear(this.body);
    await this.load(false);
  }

  async load(more) {
    let doc;
    try {
      doc = await api(this.name, { world: this.ctx.world, frame: this.want, before: more ? this.before : null });
    } catch (err) {
      this.ctx.error(this.error, err);
      return;
    }
    clear(this.error);
    this.before = doc.next;
    this.more.hidden = doc.next === null;
    this.count += doc.items.length;
    this.body.append(...doc.items.map((row) => h("tr", { dataset: { id: row.id } },
      this.columns.map(([, cell]) => h("td", {}, cell(row))), h("td", {}, jsonBlock(row[this.original])))));
    this.status.textContent = this.count ? `${fmtInt(this.count)} shown, newest first` : "none";
  }
}

const where = (r) => [fmtInt(r.frame), " ", h("span", { class: "muted" }, r.stream_id ?? "")];

export const quarantine = new LogView("quarantine", "Quarantined items", [
  ["id", (r) => r.id],
  ["frame · stream", where],
  ["utc", (r) => fmtTime(r.utc)],
  ["delta key", (r) => (r.key ? `${r.key}[${r.position ?? "–"}]` : "–")],
  ["reason", (r) => h("span", { class: "reason" }, r.reason)],
], "item");

export const late = new LogView("late", "Late attempts", [
  ["id", (r) => r.id],
  ["frame · stream", where],
  ["utc", (r) => fmtTime(r.utc)],
  ["policy", (r) => r.policy],
  ["attempted at", (r) => fmtTime(r.attempted_at)],
], "payload");
