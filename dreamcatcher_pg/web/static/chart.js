// The timeline: deltas per frame (bars), close→merged latency and merge duration (lines), in one
// inline SVG. A point is one frame, or a bucket of consecutive frames when the window holds more
// frames than points (then: deltas summed, latencies at their max).

import { fmtInt, fmtMs } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const H = 210, LEFT = 56, RIGHT = 10;
const BARS = { top: 18, bottom: 100 };
const LINES = { top: 128, bottom: 196 };

function s(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== null) el.textContent = text;
  return el;
}

function label(p) {
  const frames = p.frame_from === p.frame_to ? `frame ${p.frame_from}` : `frames ${p.frame_from}–${p.frame_to}`;
  const status = p.frames === 1
    ? Object.entries(p.status).find(([, n]) => n)?.[0] ?? ""
    : Object.entries(p.status).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ");
  return `${frames} (${status}): ${fmtInt(p.deltas)} deltas, close→merged ${fmtMs(p.close_to_merged_ms.max)}, `
    + `merge ${fmtMs(p.merge_ms.max)}`;
}

export function pointIndex(points, frame) {
  if (!points.length || frame === null) return -1;
  let best = 0;
  for (let i = 0; i < points.length; i++) {
    if (points[i].frame_from <= frame) best = i;
    if (points[i].frame_from <= frame && frame <= points[i].frame_to) return i;
  }
  return best;
}

export function renderTimeline(container, doc, selected, onSelect) {
  const points = doc.points;
  const W = Math.max(600, Math.round(container.clientWidth || 1000) - 12); // one SVG unit per pixel
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline", role: "img",
    "aria-label": "deltas per frame, close to merged latency and merge duration" });
  container.replaceChildren(svg);
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no frames"));
    return;
  }
  const n = points.length, plotW = W - LEFT - RIGHT, step = plotW / n;
  const maxDeltas = Math.max(1, ...points.map((p) => p.deltas));
  const msValues = points.flatMap((p) => [p.close_to_merged_ms.max, p.merge_ms.max]).filter((v) => v !== null);
  const maxMs = Math.max(1, ...msValues);
  const xOf = (i) => LEFT + i * step;
  const yBar = (v) => BARS.bottom - (v / maxDeltas) * (BARS.bottom - BARS.top);
  const yMs = (v) => LINES.bottom - (v / maxMs) * (LINES.bottom - LINES.top);

  svg.append(
    s("text", { x: LEFT - 6, y: BARS.top + 4, class: "axis", "text-anchor": "end" }, fmtInt(maxDeltas)),
    s("text", { x: LEFT - 6, y: BARS.bottom, class: "axis", "text-anchor": "end" }, "0"),
    s("text", { x: LEFT + 4, y: BARS.top - 6, class: "legend" }, "deltas per frame"),
    s("text", { x: LEFT - 6, y: LINES.top + 4, class: "axis", "text-anchor": "end" }, fmtMs(maxMs)),
    s("text", { x: LEFT - 6, y: LINES.bottom, class: "axis", "text-anchor": "end" }, "0"),
    s("text", { x: LEFT + 4, y: LINES.top - 8, class: "legend close" }, "— close→merged"),
    s("text", { x: LEFT + 124, y: LINES.top - 8, class: "legend merge" }, "— merge duration"),
    s("line", { x1: LEFT, x2: W - RIGHT, y1: BARS.bottom, y2: BARS.bottom, class: "base" }),
    s("line", { x1: LEFT, x2: W - RIGHT, y1: LINES.bottom, y2: LINES.bottom, class: "base" }),
  );

  const current = pointIndex(points, selected);
  points.forEach((p, i) => {
    const status = p.status.merged === p.frames ? "merged" : p.status.open ? "open" : "closed";
    const bar = s("rect", {
      x: xOf(i) + step * 0.1, width: Math.max(0.8, step * 0.8), y: yBar(p.deltas),
      height: Math.max(0.5, BARS.bottom - yBar(p.deltas)),
      class: `bar ${status}${i === current ? " selected" : ""}`, "data-frame": p.frame_to,
    });
    bar.append(s("title", {}, label(p)));
    svg.append(bar);
  });
  for (const [key, cls] of [["close_to_merged_ms", "close"], ["merge_ms", "merge"]]) {
    const coords = points.map((p, i) => (p[key].max === null ? null : `${xOf(i) + step / 2},${yMs(p[key].max)}`));
    // one polyline per run of points that have a value (a gap where frames are not merged yet)
    let run = [];
    for (const c of [...coords, null]) {
      if (c !== null) run.push(c);
      else if (run.length) {
        svg.append(run.length === 1
          ? s("circle", { cx: run[0].split(",")[0], cy: run[0].split(",")[1], r: 2, class: `dot ${cls}` })
          : s("polyline", { points: run.join(" "), class: `line ${cls}` }));
        run = [];
      }
    }
  }
  if (current >= 0) {
    const x = xOf(current) + step / 2;
    svg.append(s("line", { x1: x, x2: x, y1: BARS.top - 4, y2: LINES.bottom, class: "cursor" }));
  }
  const first = points[0], last = points[n - 1];
  svg.append(
    s("text", { x: LEFT, y: H - 1, class: "axis" }, `frame ${first.frame_from}`),
    s("text", { x: W - RIGHT, y: H - 1, class: "axis", "text-anchor": "end" }, `frame ${last.frame_to}`),
  );
  svg.addEventListener("click", (event) => {
    const box = svg.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * W;
    const i = Math.min(n - 1, Math.max(0, Math.floor((x - LEFT) / step)));
    onSelect(points[i].frame_to);
  });
}
