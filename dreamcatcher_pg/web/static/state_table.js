// The state right after a frame, one kind at a time: kind tabs, a search form, a paged table.
// Paging is by key (the server's `next`); the pages seen are kept so "previous" works, and kept
// when only the frame changes, so moving through frames shows the same keys.

import { api } from "./api.js";
import { clear, fieldChips, fmtInt, h } from "./dom.js";

export class StateTable {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.root = root;
    this.cursors = [null];
    this.page = 0;
    this.loaded = null; // what the table shows: {frame, kind, key, field, value}
    this.kinds = h("div", { class: "kind-tabs", id: "kinds", role: "tablist" });
    this.form = h("form", { id: "state-search", class: "search" },
      h("label", {}, "key contains ", h("input", { name: "key", size: 14, autocomplete: "off" })),
      h("label", {}, "field ", h("input", { name: "field", size: 10, placeholder: "any", autocomplete: "off" })),
      h("label", {}, "value contains ", h("input", { name: "value", size: 14, autocomplete: "off" })),
      h("button", { type: "submit" }, "Search"),
      h("button", { type: "button", id: "clear-search", onclick: () => this.search({}) }, "Clear"));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(this.form);
      this.search({ key: data.get("key"), field: data.get("field"), value: data.get("value") });
    });
    this.status = h("div", { id: "state-status", class: "muted" });
    this.body = h("tbody");
    this.table = h("table", { id: "state-table", class: "data" },
      h("thead", {}, h("tr", {}, h("th", {}, "key"), h("th", {}, "data"),
        h("th", { class: "num" }, "first frame"), h("th", { class: "num" }, "last changed"))),
      this.body);
    this.prev = h("button", { id: "state-prev", onclick: () => this.turn(-1) }, "◀ previous");
    this.next = h("button", { id: "state-next", onclick: () => this.turn(1) }, "next ▶");
    this.error = h("div");
    clear(root, this.kinds, this.form, this.status, this.error, this.table, h("div", { class: "pager" }, this.prev, this.next));
  }

  search(terms) {
    const p = this.ctx.params;
    this.ctx.go("frames", { frame: p.frame, kind: p.kind, key: terms.key, field: terms.field, value: terms.value });
  }

  async turn(delta) {
    this.page = Math.max(0, this.page + delta);
    await this.load(this.loaded, true);
  }

  // Show `want` = {frame, kind, key, field, value}; the page is kept when only the frame moved.
  async show(want) {
    const was = this.loaded;
    const sameQuery = was && was.kind === want.kind && was.key === want.key && was.field === want.field
      && was.value === want.value;
    if (!sameQuery) {
      this.cursors = [null];
      this.page = 0;
    }
    for (const name of ["key", "field", "value"]) this.form.elements[name].value = want[name] ?? "";
    await this.load(want, false);
  }

  async load(want, turning) {
    let doc;
    try {
      doc = await api("state", {
        world: this.ctx.world, frame: want.frame, kind: want.kind, after: this.cursors[this.page],
        key: want.key, field: want.field, value: want.value,
      });
    } catch (err) {
      this.ctx.error(this.error, err);
      return;
    }
    clear(this.error);
    this.loaded = { ...want, kind: doc.kind };
    this.cursors.length = this.page + 1;
    if (doc.next !== null) this.cursors.push(doc.next);
    this.renderKinds(doc);
    clear(this.body, doc.items.map((item) => h("tr", { dataset: { key: item.key } },
      h("td", { class: "key" }, h("a", {
        href: `#/entity?${new URLSearchParams({ world: this.ctx.world, kind: doc.kind, key: item.key, frame: doc.frame })}`,
      }, item.key)),
      h("td", {}, fieldChips(item.data)),
      h("td", { class: "num" }, fmtInt(item.first_frame)),
      h("td", { class: "num" }, fmtInt(item.last_frame)))));
    if (!doc.items.length) {
      this.body.append(h("tr", {}, h("td", { colspan: 4, class: "empty" },
        doc.search ? "no match on this page of keys" : `no ${doc.kind ?? "entity"} right after frame ${doc.frame}`)));
    }
    const total = doc.total ? `${doc.total.at_least ? "at least " : ""}${fmtInt(doc.total.count)} ${doc.kind} entities · ` : "";
    const search = doc.search
      ? `searched ${fmtInt(doc.search.scanned)} entities up to key ${doc.search.scanned_to ?? "–"}`
        + (doc.search.exhausted ? " (all)" : " — next page searches on") + " · "
      : "";
    this.status.textContent = `${total}${search}page ${this.page + 1}`;
    this.prev.disabled = this.page === 0;
    this.next.disabled = doc.next === null;
    if (turning) this.table.scrollIntoView({ block: "nearest" });
  }

  renderKinds(doc) {
    clear(this.kinds, doc.kinds.map((kind) => h("button", {
      type: "button", role: "tab", class: kind === doc.kind ? "active" : "", "aria-selected": String(kind === doc.kind),
      dataset: { kind },
      onclick: () => this.ctx.go("frames", { frame: doc.frame, kind }),
    }, kind)));
  }
}
