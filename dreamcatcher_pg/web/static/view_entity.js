// One entity: its version right after a frame with blame (which delta set each field), and its
// history, newest first, each version's changed fields with the delta that set them.

import { api } from "./api.js";
import { badge, clear, fmtInt, fmtTime, h, jsonText } from "./dom.js";

const POLICY = {
  last: "each field last-write-wins: blamed on the last item of its frame carrying the value",
  first: "append, first write wins: blamed on the first item of its frame carrying the value",
  derived: "derived by the merge from other entities: blamed on the frame",
};

function by(blame) {
  if (!blame || !blame.delta) return h("span", { class: "muted" }, "the merge of this frame");
  const d = blame.delta;
  return h("span", { class: "by" }, h("b", {}, d.stream_id), " @ ", fmtTime(d.utc), " ",
    h("code", {}, `${d.delta_key}[${d.position}]`), d.frame !== d.into_frame ? ` (late, written for frame ${d.frame})` : "");
}

class EntityView {
  mount(root, ctx) {
    this.ctx = ctx;
    this.kind = h("select", { name: "kind", id: "entity-kind" });
    this.key = h("input", { name: "key", id: "entity-key", size: 30, autocomplete: "off", required: true });
    this.frame = h("input", { name: "frame", id: "entity-frame", type: "number", min: 0 });
    const form = h("form", { class: "search", id: "entity-form" },
      h("label", {}, "kind ", this.kind), h("label", {}, " key ", this.key), h("label", {}, " at frame ", this.frame),
      h("button", { type: "submit" }, "Show"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      ctx.go("entity", { kind: this.kind.value, key: this.key.value, frame: this.frame.value });
    });
    this.head = h("div", { id: "entity-head" });
    this.blame = h("tbody");
    this.history = h("div", { id: "history" });
    this.older = h("button", { id: "history-older", onclick: () => this.loadHistory(true) }, "older versions ▼");
    clear(root, h("h2", {}, "Entity history and blame"), form, this.head,
      h("table", { id: "blame-table", class: "data" }, h("thead", {}, h("tr", {},
        h("th", {}, "field"), h("th", {}, "value"), h("th", { class: "num" }, "set in frame"), h("th", {}, "by the delta"))),
      this.blame),
      h("h3", {}, "Versions"), this.history, h("div", { class: "pager" }, this.older));
  }

  async show(params, ctx) {
    clear(this.kind, (ctx.worldDoc.kinds || []).map((k) => h("option", { value: k }, k)));
    if (params.kind) this.kind.value = params.kind;
    this.key.value = params.key ?? "";
    this.frame.value = params.frame ?? (ctx.lastMerged ?? "");
    clear(this.blame);
    clear(this.history);
    this.older.hidden = true;
    if (!params.kind || !params.key) {
      clear(this.head, h("p", { class: "muted" }, "Pick an entity: a key in the state table, or a kind and a key here."));
      return;
    }
    this.want = { kind: params.kind, key: params.key, frame: params.frame };
    this.before = null;
    await Promise.all([this.loadAt(), this.loadHistory(false)]);
  }

  async loadAt() {
    let doc;
    try {
      doc = await api("entity", { world: this.ctx.world, ...this.want });
    } catch (err) {
      this.ctx.error(this.head, err);
      return;
    }
    const v = doc.version;
    clear(this.head,
      h("p", { class: "entity-title" }, h("b", {}, doc.kind), " ", h("code", {}, doc.key), ` right after frame ${fmtInt(doc.frame)}`),
      v ? h("p", { class: "muted" }, `this version since frame ${fmtInt(v.valid_from)}`
        + (v.valid_to === null ? " (current)" : `, until frame ${fmtInt(v.valid_to)}`)
        + ` · first seen in frame ${fmtInt(v.first_frame)} · ${fmtInt(doc.versions)} versions in all`)
        : h("p", { class: "empty" }, `it did not exist right after frame ${fmtInt(doc.frame)}`
          + (doc.versions ? ` (${fmtInt(doc.versions)} versions at other frames, below)` : "")),
      h("p", { class: "muted" }, `merge rule: ${POLICY[doc.policy] ?? doc.policy}`));
    clear(this.blame, doc.fields.map((f) => h("tr", { dataset: { field: f.field ?? "" } },
      h("td", {}, h("b", {}, f.field ?? "(value)")),
      h("td", {}, h("code", {}, jsonText(f.value, 120))),
      h("td", { class: "num" }, h("a", { href: `#/frames?${new URLSearchParams({ world: this.ctx.world, frame: f.frame, kind: doc.kind })}` },
        fmtInt(f.frame))),
      h("td", {}, by(f)))));
  }

  async loadHistory(more) {
    let doc;
    try {
      doc = await api("history", { world: this.ctx.world, kind: this.want.kind, key: this.want.key,
        before: more ? this.before : null });
    } catch (err) {
      this.ctx.error(this.history, err);
      return;
    }
    this.before = doc.next;
    this.older.hidden = doc.next === null;
    this.history.append(...doc.versions.map((v) => h("div", { class: "version", dataset: { frame: v.valid_from } },
      h("div", { class: "version-head" }, h("b", {}, `frame ${fmtInt(v.valid_from)}`),
        v.valid_to === null ? badge("current") : h("span", { class: "muted" }, ` until frame ${fmtInt(v.valid_to)}`),
        v.created ? badge("created", "added") : null),
      h("ul", { class: "fields" }, v.changes.map((c) => h("li", {},
        h("b", {}, c.field ?? "(value)"), ": ",
        "before" in c ? [h("span", { class: "old" }, jsonText(c.before, 80)), " → "] : null,
        h("span", { class: "new" }, "after" in c ? jsonText(c.after, 80) : "(removed)"),
        " ", h("span", { class: "muted" }, "by "), by(c)))))));
  }
}

export const view = new EntityView();
