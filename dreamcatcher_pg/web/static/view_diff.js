// Diff A → B: per kind, the entities added, changed (field: old → new) and removed, paged by key.

import { api } from "./api.js";
import { badge, clear, fieldChips, fmtInt, h, jsonText } from "./dom.js";

class DiffView {
  mount(root, ctx) {
    this.ctx = ctx;
    this.cursors = [null];
    this.page = 0;
    this.a = h("input", { type: "number", name: "a", min: 0, id: "diff-a", required: true });
    this.b = h("input", { type: "number", name: "b", min: 0, id: "diff-b", required: true });
    const form = h("form", { class: "search", id: "diff-form" },
      h("label", {}, "from frame ", this.a), h("label", {}, " to frame ", this.b),
      h("button", { type: "submit" }, "Diff"),
      h("button", { type: "button", onclick: () => this.go(this.b.value, this.a.value) }, "⇄ swap"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.go(this.a.value, this.b.value);
    });
    this.summary = h("div", { id: "diff-summary", class: "muted" });
    this.kinds = h("div", { class: "kind-tabs", id: "diff-kinds" });
    this.body = h("tbody");
    this.error = h("div");
    this.prev = h("button", { onclick: () => this.turn(-1) }, "◀ previous");
    this.next = h("button", { id: "diff-next", onclick: () => this.turn(1) }, "next ▶");
    clear(root, h("h2", {}, "What changed between two frames"), form, this.summary, this.kinds, this.error,
      h("table", { id: "diff-table", class: "data" },
        h("thead", {}, h("tr", {}, h("th", {}, "key"), h("th", {}, "change"), h("th", {}, "fields"))), this.body),
      h("div", { class: "pager" }, this.prev, this.next));
  }

  go(a, b, kind = null) {
    this.ctx.go("diff", { a, b, kind: kind ?? this.ctx.params.kind });
  }

  async turn(delta) {
    this.page = Math.max(0, this.page + delta);
    await this.load();
  }

  async show(params, ctx) {
    const last = ctx.lastMerged;
    if (last === null) {
      clear(this.summary, "No frame of this world is merged yet.");
      return;
    }
    let b = params.b !== undefined ? Number(params.b) : last;
    let a = params.a !== undefined ? Number(params.a) : null;
    if (a === null) {
      const info = await api("frame", { world: ctx.world, frame: b }).catch(() => null);
      a = info && info.prev_merged !== null ? info.prev_merged : Math.max(0, b - 1);
    }
    const key = `${a}|${b}|${params.kind ?? ""}`;
    if (key !== this.shown) {
      this.cursors = [null];
      this.page = 0;
      this.shown = key;
    }
    this.want = { a, b, kind: params.kind };
    this.a.value = String(a);
    this.b.value = String(b);
    await this.load();
  }

  async load() {
    const { a, b, kind } = this.want;
    let doc;
    try {
      doc = await api("diff", { world: this.ctx.world, a, b, kind, after: this.cursors[this.page] });
    } catch (err) {
      this.ctx.error(this.error, err);
      clear(this.body);
      return;
    }
    clear(this.error);
    this.cursors.length = this.page + 1;
    if (doc.next !== null) this.cursors.push(doc.next);
    const counts = (k) => doc.summary && doc.summary[k];
    clear(this.kinds, doc.kinds.map((k) => {
      const c = counts(k);
      const n = c ? c.added + c.changed + c.removed : null;
      return h("button", {
        type: "button", class: k === doc.kind ? "active" : "", dataset: { kind: k },
        onclick: () => this.go(a, b, k),
      }, k, n === null ? "" : ` (${fmtInt(n)})`);
    }));
    const c = counts(doc.kind);
    this.summary.textContent = (c
      ? `${doc.kind}: ${fmtInt(c.added)} added, ${fmtInt(c.changed)} changed, ${fmtInt(c.removed)} removed`
      : `${doc.versions_between.at_least ? "more than " : ""}${fmtInt(doc.versions_between.count)} versions `
        + "began between the two frames (too many to count per kind; paged below)")
      + ` · frame ${fmtInt(a)} → ${fmtInt(b)} · page ${this.page + 1}`;
    clear(this.body, doc.items.map((item) => h("tr", { dataset: { key: item.key, change: item.change } },
      h("td", { class: "key" }, h("a", {
        href: `#/entity?${new URLSearchParams({ world: this.ctx.world, kind: doc.kind, key: item.key, frame: b })}`,
      }, item.key)),
      h("td", {}, badge(item.change)),
      h("td", {}, item.change === "changed" ? fieldList(item.fields)
        : fieldChips(item.change === "added" ? item.after : item.before)))));
    if (!doc.items.length) {
      this.body.append(h("tr", {}, h("td", { colspan: 3, class: "empty" }, `no ${doc.kind ?? ""} changed on this page`)));
    }
    this.prev.disabled = this.page === 0;
    this.next.disabled = doc.next === null;
  }
}

function fieldList(fields) {
  return h("ul", { class: "fields" }, fields.map((f) => h("li", {},
    h("b", {}, f.field ?? "(value)"), ": ",
    h("span", { class: "old" }, "before" in f ? jsonText(f.before, 80) : "(none)"), " → ",
    h("span", { class: "new" }, "after" in f ? jsonText(f.after, 80) : "(none)"))));
}

export const view = new DiffView();
