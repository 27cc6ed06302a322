// The interactive attribution-graph viewer of graph.html (sparse-circuits, reports/viewer.py).
//
// Reads the graph from the JSON element #graph-data (reports/viewer.py), chooses what to draw
// (the node budget and edge threshold, pinned nodes, supernodes), lays it out by stage (rows,
// bottom to top) and position (columns) and draws it as SVG; a click shows a node in the side
// panel, hovering highlights its paths, the search box finds nodes by token or label. Pins and
// supernodes live in the URL hash and in data.qParams, as circuit-tracer keeps them.
// Every string from the graph reaches the page as text (textContent, text nodes), never markup.
"use strict";

(function () {
  performance.mark("viewer:start");
  const SVGNS = "http://www.w3.org/2000/svg";
  const KIND_NAMES = {
    embedding: "token embedding", lorsa: "Lorsa head", transcoder: "transcoder feature",
    error: "error (what the dictionary misses)", logit: "logit", supernode: "supernode",
    bias: "constant (a sublayer's decoder bias at this position)",
  };
  // Stage 0's constants are the position vectors (circuits.nodes.constant_name).
  const kindName = (n) => n.kind === "bias" && n.stage === 0 ? "constant (the position vector at this position)" : KIND_NAMES[n.kind] || n.kind;
  // Layout, in px: gaps between nodes of a cell, between the cells of one stage, the least step
  // from one position to the next, between the rows of one stage and between stages; the
  // text's line height. (Each stage's name, on both sides, takes its own width: layout.)
  const NODE_GAP = 10, COLUMN_GAP = 14, MIN_STEP = 4, ROW_GAP = 10, STAGE_GAP = 18;
  const LINE_H = 13, FONT = "11px Helvetica, Arial, sans-serif", SWEEPS = 4, TOP_EDGES = 10, QK_SHOWN = 8;

  const root = document.getElementById("viewer");
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const meta = data.metadata, nodes = data.nodes, N = nodes.length;
  // What the node budget ranks (reports.layout.INNER_KINDS, as the page's first view counts it)
  const INNER = new Set(data.view.innerKinds);
  // A node's row in the table below has the element id NODE_ANCHOR + its id (reports.html)
  const NODE_ANCHOR = data.view.nodeAnchor;
  // Why a token's edge under the threshold is drawn, as the SVG's tooltip says (reports.layout)
  const TOKEN_EDGE_NOTE = data.view.tokenEdgeNote;
  // A sparse graph explains the replacement, whose probabilities can be far from the model's
  // (a reviewer's ' Thursday' p=0.811 in its box and panels, 0.982 in the model).
  const SPARSE_NOTE = "sparse mode: the graph and its probabilities are the replacement's, except those said to be the model's";
  // The mechanism summary's groups whose ablation check of the first target is flagged (the
  // linear graph not to be trusted there), as sets of member ids: a supernode of exactly those
  // members says so on its box.
  const summaryGroups = (data.mechanisms ? data.mechanisms.groups : []).map((g) => ({ g, ids: new Set(g.members) }));
  const firstTarget = data.mechanisms && data.mechanisms.targets.length ? data.mechanisms.targets[0].node : null;
  // The summary group whose members (in this graph) are exactly a supernode's, or null.
  function summaryGroupOf(members) {
    const hit = summaryGroups.find((x) => x.ids.size === members.length && members.every((i) => x.ids.has(nodes[i].id)));
    return hit ? hit.g : null;
  }
  // A supernode of a summary group's members named as the summary names it (its key and name),
  // whose box is the summary's; one the reader named otherwise shows that name.
  const summaryNamed = (g, known) => !!known && g.name === known.supernode;
  // A summary group's check of the first target is flagged; a QK source's box shows the
  // attention it shapes instead (acting through attention is why it is there).
  function isFlagged(g) {
    return !!g && !g.writesQk && g.checks.some((c) => c[0] === firstTarget && c[4]);
  }
  // The summary's main path, drawn first to the eye (a review: on a first view the flagged
  // boxes and the q/k edges drew it before the predicting heads did): each target's
  // predicting group, and each step of the top paths (group to group, the last to its target),
  // as member ids.
  const summaryMembers = new Map((data.mechanisms ? data.mechanisms.groups : []).map((g) => [g.key, g.members]));
  const predictingIds = new Set((data.mechanisms ? data.mechanisms.targets : [])
    .flatMap((t) => (t.predicting ? summaryMembers.get(t.predicting) || [] : [])));
  const pathSteps = (data.mechanisms ? data.mechanisms.paths : []).flatMap((p) => {
    const stops = [...p.groups.map((k) => summaryMembers.get(k) || []), [p.target]];
    return stops.slice(1).map((to, j) => [stops[j], to]);
  });
  const src = data.links.source, tgt = data.links.target, wt = data.links.weight, E = src.length;
  const byId = new Map(nodes.map((n, i) => [n.id, i]));
  const byAnchor = new Map(nodes.map((n, i) => ["#" + NODE_ANCHOR + n.id, i])); // the table's links
  const inE = nodes.map(() => []), outE = nodes.map(() => []);
  for (let e = 0; e < E; e++) { inE[tgt[e]].push(e); outE[src[e]].push(e); }
  for (let i = 0; i < N; i++) {
    inE[i].sort((a, b) => Math.abs(wt[b]) - Math.abs(wt[a]) || src[a] - src[b]);
    outE[i].sort((a, b) => Math.abs(wt[b]) - Math.abs(wt[a]) || tgt[a] - tgt[b]);
  }
  const score = nodes.map((n) => {
    // layout.node_scores, as the data holds it: a downstream global graph's reach from its
    // start, a QK circuit's shares (score), else influence or |activation|
    const v = n.score != null ? n.score : n.influence != null ? n.influence : n.activation != null ? Math.abs(n.activation) : null;
    return v == null ? -Infinity : v;
  });
  const byScore = (a, b) => (score[b] > score[a]) - (score[b] < score[a]) || a - b;
  const innerRanked = nodes.map((_, i) => i).filter((i) => INNER.has(nodes[i].kind)).sort(byScore);
  // What the budget ranks, in words, from the kinds this graph holds: "heads and features".
  const INNER_WORDS = (() => {
    const words = [["lorsa", "heads"], ["transcoder", "features"], ["error", "errors"], ["bias", "constants"]]
      .filter(([k]) => nodes.some((n) => n.kind === k)).map((x) => x[1]);
    return words.length > 1 ? words.slice(0, -1).join(", ") + " and " + words[words.length - 1] : words[0] || "heads and features";
  })();
  // A node is found by its id, label, drawn text, token, promoted tokens and its unit's concept
  // label (from the dashboards: "answer digit" finds every unit labelled with one).
  // A constant (a position vector, a block's bias: kind "bias") is found by its own text
  // ("position vector", "L0 attn bias"), never by the prompt's token at its position: a search
  // for ' Wednesday' found every constant there beside the heads and features that read it.
  const atToken = (n) => meta.positional && n.kind !== "bias";
  const searchText = nodes.map((n) => {
    const token = atToken(n) ? meta.promptTokens[n.pos] || "" : "";
    const concept = (data.dashboards[n.unit] || {}).concept;
    return [n.id, n.label, n.lines.join(" "), token, (n.promotes || []).join(" "), concept ? concept.label : ""]
      .join(" \u0001 ").toLowerCase();
  });

  // The prompt's text as its tokens read back, lowercased, with the first and last position
  // of each of its characters, so that a search matches across tokens: a word the tokenizer
  // split (' b' 'ak' 'er') and a character split into its bytes ('<0xC3>' '<0xA9>', each an
  // incomplete character's byte joined with the bytes around it, as
  // toy_models.tokenizer.text_of_token_texts reads them); a search for either found nothing.
  const promptText = (() => {
    const out = { text: "", from: [], to: [] };
    if (!meta.positional || !meta.promptTokens) return out;
    const bytes = [], byteAt = [], utf8 = new TextEncoder();
    meta.promptTokens.forEach((tok, p) => {
      String(tok).split(/(<0x[0-9A-F]{2}>)/).forEach((part, j) => {
        const got = j % 2 ? [parseInt(part.slice(3, 5), 16)] : utf8.encode(part);
        for (const b of got) { bytes.push(b); byteAt.push(p); }
      });
    });
    const decode = new TextDecoder();
    for (let i = 0; i < bytes.length;) {
      const b = bytes[i];
      let n = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
      for (let k = 1; k < n; k++) if (i + k >= bytes.length || (bytes[i + k] & 0xc0) !== 0x80) { n = 1; break; }
      for (const u of decode.decode(new Uint8Array(bytes.slice(i, i + n))).toLowerCase()) {
        out.text += u;
        for (let c = 0; c < u.length; c++) { out.from.push(byteAt[i]); out.to.push(byteAt[i + n - 1]); }
      }
      i += n;
    }
    return out;
  })();
  // Where a (lowercased) query lies in the prompt's text: each occurrence's first and last
  // position.
  function promptSpans(q) {
    const spans = [];
    if (!q) return spans;
    for (let at = promptText.text.indexOf(q); at >= 0; at = promptText.text.indexOf(q, at + 1)) {
      spans.push([promptText.from[at], promptText.to[at + q.length - 1]]);
    }
    return spans;
  }

  // ------------------------------------------------------------------------------ text helpers
  // Control characters are shown as \xNN, as on the rest of the page; bidirectional controls
  // (which would draw the text around them backwards) as <U+202E>, as reports.graphviz does.
  const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;
  const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
  const shown = (s) => String(s)
    .replace(CONTROL, (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"))
    .replace(BIDI, (c) => "<U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + ">");
  // The largest f(x) over a list, by a loop: Math.max(...list) overflows the call stack on the
  // hundreds of thousands of edges a graph kept whole can hold.
  function maxOf(list, f, start) {
    let m = start;
    for (const x of list) { const v = f(x); if (v > m) m = v; }
    return m;
  }
  function fmt(x, digits) {
    if (x == null || !isFinite(x)) return "–";
    const t = Number(x).toPrecision(digits || 4);
    return String(Number(t));
  }
  const signed = (x) => (x > 0 ? "+" : "") + fmt(x, 3);
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = shown(v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(typeof c === "string" ? shown(c) : c);
    return e;
  }
  function svgEl(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  const measure = document.createElement("canvas").getContext("2d");
  measure.font = FONT;
  const textWidth = (s) => measure.measureText(s).width;
  // A token as Python's repr writes it, as the boxes, the table and the printed summary do: a
  // newline as \n (raw, the page showed it as a space: a researcher's target '\n' read as
  // ' '), a backslash doubled, a token holding ' (and no ") in double quotes.
  const quote = (t) => {
    const s = String(t).replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\r/g, "\\r")
      .replace(/\t/g, "\\t");
    return s.includes("'") && !s.includes('"') ? '"' + shown(s) + '"'
      : "'" + shown(s.replace(/'/g, "\\'")) + "'";
  };

  // ------------------------------------------------------------------------------------ state
  const state = {
    budget: Math.min(data.view.budget, innerRanked.length),
    edgeMin: data.view.edgeMin || 0,
    pinned: new Set(), groups: [], clicked: null, picks: new Set(), query: "", zoom: null, whole: false,
  };
  // The page's own state (graph.json's qParams: a summary's groups as supernodes, pins), set at
  // the start: a hash that leaves pins or supernodes out means these, whether the page is
  // opened with it or it is pasted in place, and the URL says "none" where the page has its
  // own, so that one URL draws one picture (a reviewer's ungrouped page came back grouped).
  const defaults = { budget: state.budget, edgeMin: state.edgeMin, pinned: new Set(), groups: [], clicked: null };
  let view = null, hovered = null, drawnOnce = false;
  let edgeTyped = false; // the edge threshold's box holds text not yet applied (Enter, or leaving it)

  // What the URL held that the page ignores, cut short: an id can be any length.
  const clip = (x) => { const t = String(x); return t.length > 60 ? t.slice(0, 57) + "..." : t; };
  // Supernodes are [name, id, id, ...] (circuit-tracer's qParams): two nodes or more, a node in
  // one at most, names non-empty and unique (supernodes are keyed by name, as in Python).
  function parseGroups(list, notes) {
    const groups = [], taken = new Set();
    if (!Array.isArray(list)) { notes.push("supernodes: not a list"); return groups; }
    for (const g of list) {
      if (!Array.isArray(g) || g.length < 2 || !g.every((x) => typeof x === "string")) {
        notes.push("a supernode that is not [name, id, ...]"); continue;
      }
      const name = g[0];
      if (!name.trim() || groups.some((o) => o.name === name)) {
        notes.push("supernode " + JSON.stringify(clip(name)) + ": empty or repeated name"); continue;
      }
      const members = [];
      for (const id of g.slice(1)) {
        const i = byId.get(id);
        if (i === undefined) notes.push("no node " + clip(id));
        else if (!taken.has(i)) { taken.add(i); members.push(i); }
        // a node in an earlier supernode stays there, said (it left this one silently)
        else if (!members.includes(i)) notes.push(clip(id) + " in two supernodes: kept in the first");
      }
      if (members.length >= 2) groups.push({ name, members });
      else notes.push("supernode " + JSON.stringify(clip(name)) + ": fewer than two nodes");
    }
    return groups;
  }
  function applyParams(q, notes) {
    if (q.pinnedIds !== undefined) {
      const ids = Array.isArray(q.pinnedIds) ? q.pinnedIds : String(q.pinnedIds).split(",");
      state.pinned = new Set();
      for (const id of ids) {
        if (!id) continue;
        const i = byId.get(id);
        if (i === undefined) notes.push("no node " + clip(id)); else state.pinned.add(i);
      }
    }
    if (q.supernodes !== undefined) state.groups = parseGroups(q.supernodes, notes);
    if (q.clickedId !== undefined) {
      const i = byId.get(q.clickedId);
      state.clicked = i === undefined ? null : { node: i };
      if (i === undefined && q.clickedId) notes.push("no node " + clip(q.clickedId));
    }
  }
  function readHash(notes) {
    const h = location.hash.slice(1);
    if (!h.includes("=")) return false; // e.g. #node-... from the table below: not a state
    const p = new URLSearchParams(h), q = {};
    if (p.has("pinnedIds")) q.pinnedIds = p.get("pinnedIds");
    if (p.has("supernodes")) {
      try { q.supernodes = JSON.parse(p.get("supernodes")); } catch (err) { notes.push("supernodes: not JSON"); }
    }
    if (p.has("clickedId")) q.clickedId = p.get("clickedId");
    applyParams(q, notes);
    if (p.has("clickedGroup")) { // a supernode, by its name (names are unique), or by the key of
      // the summary group whose members it holds exactly (g0: as the search box takes it)
      const name = p.get("clickedGroup");
      let k = state.groups.findIndex((g) => g.name === name);
      if (k < 0) k = state.groups.findIndex((g) => (summaryGroupOf(g.members) || {}).key === name);
      if (k >= 0) state.clicked = { group: k };
      else notes.push("no supernode " + JSON.stringify(clip(name)));
    }
    // Numbers are whole strings: "5abc", "-3", "NaN" and "1e999" are reported, never half-read.
    if (p.has("nodes")) {
      const t = p.get("nodes");
      if (/^[0-9]+$/.test(t)) {
        state.budget = Math.min(Number(t), budgetMax()); // boxes (computeView)
        if (Number(t) > budgetMax()) notes.push("nodes=" + clip(t) + ": more than the page has, " + budgetMax() + " drawn");
      } else notes.push("nodes=" + clip(t) + ": not a whole number");
    }
    if (p.has("edgeMin")) {
      const t = p.get("edgeMin"), m = Number(t);
      if (t.trim() !== "" && Number.isFinite(m) && m >= 0) state.edgeMin = m;
      else notes.push("edgeMin=" + clip(t) + ": not a finite number >= 0");
    }
    return true;
  }
  function groupIds(g) { return [g.name, ...g.members.map((i) => nodes[i].id)]; }
  function writeState() {
    const pinnedIds = [...state.pinned].map((i) => nodes[i].id);
    const supernodes = state.groups.map(groupIds);
    const clickedId = state.clicked && state.clicked.node !== undefined ? nodes[state.clicked.node].id : "";
    data.qParams.pinnedIds = pinnedIds;
    data.qParams.supernodes = supernodes;
    data.qParams.clickedId = clickedId;
    const p = new URLSearchParams();
    // written where they differ from the page's own (``defaults``: what a hash without them
    // means), so a page opened as it starts keeps a short URL (a reviewer's first click wrote
    // all 11 summary supernodes, 3 KB); an empty list says "none" where the page has some
    const pinsAsDefault = [...defaults.pinned].map((i) => nodes[i].id).sort().join(",");
    if ([...pinnedIds].sort().join(",") !== pinsAsDefault) p.set("pinnedIds", pinnedIds.join(","));
    if (JSON.stringify(supernodes) !== JSON.stringify(defaults.groups.map(groupIds))) {
      p.set("supernodes", JSON.stringify(supernodes));
    }
    // a page whose qParams click a node says "none" when none is (a review: its reload,
    // the hash silent, clicked the qParams' node again)
    const groupClicked = !!state.clicked && state.clicked.group !== undefined;
    if (clickedId || (defaults.clicked && !groupClicked)) p.set("clickedId", clickedId);
    const c = state.clicked;
    if (c && c.group !== undefined && state.groups[c.group]) p.set("clickedGroup", state.groups[c.group].name);
    if (state.budget !== defaults.budget) p.set("nodes", String(state.budget));
    if (state.edgeMin !== defaults.edgeMin) p.set("edgeMin", String(state.edgeMin));
    const hash = p.toString();
    const url = location.pathname + location.search + (hash ? "#" + hash : "");
    try { history.replaceState(null, "", url); } catch (err) { location.replace(hash ? "#" + hash : "#"); }
    if (ui.qparams) ui.qparams.textContent = JSON.stringify(data.qParams, null, 1);
  }

  // ------------------------------------------------------------------------- what is drawn
  // Items are what the drawing shows: single nodes and supernodes. Like reports.layout.select:
  // the `budget` highest heads, features and errors (layout.node_scores: influence, reach or |activation|; below, how
  // a supernode counts), every target (logits, a head or feature traced from), pinned nodes
  // and supernode members, and the embeddings a drawn edge leaves; edges between items are
  // summed and drawn when |weight| >= edgeMin.
  //
  // The budget counts what the drawing shows as boxes: a supernode is one (drawn whole, at any
  // budget, with all its members), and the rest of the budget goes to the top heads, features
  // and errors outside every supernode. A researcher moving the budget by one then sees one
  // box come or go; counted by nodes, a summary's supernodes took the budget's first places
  // with members already drawn inside them, and moving it changed little (a review: 0 to 30
  // added 14 boxes to a page of 9 supernodes, the status read "the top 0 and 127 more").
  function computeView() {
    const show = new Uint8Array(N);
    const groupOf = new Int32Array(N).fill(-1);
    state.groups.forEach((g, k) => g.members.forEach((i) => { groupOf[i] = k; show[i] = 1; }));
    state.budget = Math.min(state.budget, budgetMax());
    // the least influential box drawn (tokenEdges): a head, feature or error of the budget's,
    // or a supernode by its most influential member, as it is ranked (a summary's groups are
    // drawn whole, with members of next to no influence: counted one by one, they took 17
    // tokens of a 28-token trace under the bar)
    const boxScores = state.groups.map((g) => maxOf(g.members.filter((i) => INNER.has(nodes[i].kind)), (i) => score[i], -Infinity));
    let fromBudget = 0, least = -maxOf(boxScores.filter((v) => v > -Infinity), (v) => -v, -Infinity);
    for (const i of innerRanked) {
      if (fromBudget >= state.budget - rankedGroups(state.groups)) break;
      if (groupOf[i] < 0) { show[i] = 1; fromBudget++; least = Math.min(least, score[i]); }
    }
    nodes.forEach((n, i) => { if (n.kind === "logit" || n.target) show[i] = 1; });
    for (const i of state.pinned) show[i] = 1;
    // The QK source each drawn head's record names on each side is drawn too, beyond the
    // budget (reports.layout.select): the heads behind an attention pattern have little
    // influence of their own.
    const behind = [];
    for (let i = 0; i < N; i++) {
      if (!show[i] || nodes[i].kind !== "lorsa" || !nodes[i].qk) continue;
      for (const rec of nodes[i].qk.slice(0, 1)) {
        if (meta.positional && rec.key !== nodes[i].attends) continue;
        for (const side of ["q", "k"]) {
          for (const top of topSources(rec, side)) {
            if (!show[top[0]] && INNER.has(nodes[top[0]].kind)) behind.push(top[0]);
          }
        }
      }
    }
    for (const i of behind) show[i] = 1;
    const candidate = show.slice();
    nodes.forEach((n, i) => { if (n.kind === "embedding") candidate[i] = 1; });

    const items = [], itemOf = new Int32Array(N).fill(-1);
    state.groups.forEach((g, k) => {
      const best = g.members.slice().sort(byScore)[0];
      const known = summaryGroupOf(g.members), flagged = isFlagged(known), own = summaryNamed(g, known);
      const size = known && known.size !== g.members.length ? [`${g.members.length} of them drawn`] : [];
      // a supernode the reader named shows the name, and which summary group it is (the
      // summary's facts are in its panel): the summary's box hid a reader's "my inducers"
      const lines = own ? [...known.box.map((x) => fitText(x, data.view.boxChars)), ...size]
        : [fitText(g.name, 16), g.members.length + " nodes" + (known ? " · " + known.key : "")];
      items.push({
        group: k, kind: "supernode", members: g.members, name: g.name, flagged, qkSource: !!(known && known.writesQk), known,
        stage: maxOf(g.members, (i) => nodes[i].stage, -Infinity),
        pos: meta.positional ? nodes[best].pos : 0,
        score: maxOf(g.members, (i) => score[i], -Infinity),
        lines: [...lines, ...(flagged ? ["⚑ check flagged"] : [])],
      });
      for (const i of g.members) itemOf[i] = items.length - 1;
    });
    for (let i = 0; i < N; i++) {
      if (!candidate[i] || groupOf[i] >= 0) continue;
      itemOf[i] = items.length;
      items.push({ node: i, kind: nodes[i].kind, stage: nodes[i].stage, pos: nodes[i].pos, score: score[i], lines: nodes[i].lines });
    }
    const M = items.length, sums = new Map();
    for (let e = 0; e < E; e++) {
      const a = itemOf[src[e]], b = itemOf[tgt[e]];
      if (a < 0 || b < 0 || a === b) continue;
      const key = a * M + b;
      sums.set(key, (sums.get(key) || 0) + wt[e]);
    }
    const edges = [];
    let among = 0;
    sums.forEach((w, key) => {
      if (w === 0) return;
      among++;
      if (Math.abs(w) >= state.edgeMin) edges.push({ s: Math.floor(key / M), t: key % M, w });
    });
    edges.push(...tokenEdges(items, edges, sums, M, least));
    edges.sort((x, y) => Math.abs(y.w) - Math.abs(x.w));

    // QK edges: each drawn head's strongest query-side and key-side node among the candidates,
    // from its record at the key it reads (the first; reports.layout.qk_edges draws the same).
    const qk = new Map();
    for (let i = 0; i < N; i++) {
      if (!show[i] || !nodes[i].qk) continue;
      for (const rec of nodes[i].qk.slice(0, 1)) {
        if (meta.positional && rec.key !== nodes[i].attends) continue;  // not the key it reads
        for (const side of ["q", "k"]) {
          for (const top of topQK(rec, side, candidate)) {
            const a = itemOf[top[0]], b = itemOf[i];
            if (a === b) continue;
            const key = a + "," + b + "," + side, old = qk.get(key);
            if (!old || Math.abs(top[1]) > Math.abs(old.v)) qk.set(key, { s: a, t: b, side, v: top[1], n: top[2] || 1, pair: top[3] || null, total: !!top[4] });
          }
        }
      }
    }
    const qkEdges = [...qk.values()];
    const leaves = new Uint8Array(M);
    for (const e of edges) leaves[e.s] = 1;
    for (const e of qkEdges) leaves[e.s] = 1;
    items.forEach((it, k) => {
      // An embedding is drawn when a drawn edge leaves it, or when pinned or a target (the
      // token a downstream global graph starts from).
      it.drawn = !(it.kind === "embedding" && !leaves[k] && !state.pinned.has(it.node) && !nodes[it.node].target);
    });
    return { items, itemOf, edges, qkEdges, among, groupOf, fromBudget, sums, M };
  }
  // In a prompt's graph ranked by influence, each token at least as influential as the least
  // influential head, feature or error the budget draws, that no edge over the threshold
  // leaves, is drawn with its strongest edge to what is drawn (as the view sums it), however
  // weak: one edge per token, marked ``token``. Lowering the threshold to reach them took a
  // 29-token drawing from 174 edges to 694, and without it a token of influence 0.022 was
  // hidden beside a drawn head of 0.0099 (reports.layout.token_edges draws the same).
  function tokenEdges(items, edges, sums, M, least) {
    if (!meta.positional || data.view.rankedBy !== "influence" || least === Infinity) return [];
    const leaves = new Uint8Array(M), best = new Map();
    for (const e of edges) leaves[e.s] = 1;
    sums.forEach((w, key) => {
      const a = Math.floor(key / M), b = key % M, it = items[a];
      if (w === 0 || leaves[a] || it.node === undefined || it.kind !== "embedding") return;
      if (!(score[it.node] > 0 && score[it.node] >= least) || items[b].kind === "embedding") return;
      const old = best.get(a);
      if (!old || Math.abs(w) > Math.abs(old.w) || (Math.abs(w) === Math.abs(old.w) && b < old.t)) best.set(a, { s: a, t: b, w, token: true });
    });
    return [...best.values()];
  }
  // The most the budget can count: every supernode and every head, feature and error outside
  // them (computeView).
  function budgetMax() {
    const grouped = new Set(state.groups.flatMap((g) => g.members));
    return rankedGroups(state.groups) + innerRanked.filter((i) => !grouped.has(i)).length;
  }
  // The budget that draws what `n` nodes by rank drew (reports.layout.select's, which knows no
  // supernodes) beside `groups`: each supernode, and those of the top `n` outside them. The
  // page's first picture stays the one written for it.
  function boxBudget(n, groups) {
    const grouped = new Set(groups.flatMap((g) => g.members));
    return rankedGroups(groups) + innerRanked.slice(0, n).filter((i) => !grouped.has(i)).length;
  }
  // The supernodes the budget counts, one box each: those holding a head, feature, error or
  // constant. One of tokens or logits alone is drawn beside the budget, as they are (a review:
  // grouping a name's sub-tokens took a head out of the drawing, the status line reading "the
  // budget's 33: 1 supernode holding 0, one box each, and the top 32 outside them").
  function ranksInBudget(members) { return members.some((i) => INNER.has(nodes[i].kind)); }
  function rankedGroups(groups) { return groups.filter((g) => ranksInBudget(g.members)).length; }
  // A record's largest source group on `side` other than a token with a member on the page
  // (its strongest such member, the group's total and its size), and before it the side's own
  // token where that leads the side (reports.layout._top_qk_sources). `present` (optional):
  // only members drawn count.
  function topSources(rec, side, present) {
    const mine = (rec.sources || []).filter((x) => x.side === side);
    const drawnOf = (x) => {
      for (const id of x.members) {
        const i = byId.get(id);
        if (i !== undefined && (!present || present[i])) return [i, x.value, x.members.length];
      }
      return null;
    };
    const token = mine.length && mine[0].kind === "embedding" ? drawnOf(mine[0]) : null;
    let other = null;
    for (const x of mine) if (x.kind !== "embedding" && (other = drawnOf(x))) break;
    return [token, other].filter((t) => t);
  }
  // Without sources (a block-0 head: its sides hold tokens and constants alone), the side's
  // node of the largest pair term drawn (reports.layout._top_qk_node), valued by its own total
  // over every partner (the record's marginal on that side; a review found both edges showing
  // the one pair's term). Where the record lists no total for the node, the pair's term
  // stands, said to be one (qkEdgeWhat): [node, value, 1, the pair or null, a total].
  // Such an edge is drawn when it carries data.view.qkMinShare of the head's score at least
  // (reports.layout.QK_MIN_SHARE: a global graph's top token pair holds 0.2-2% of the lift).
  // ``any``: the side's node whatever its share (why a token is left out: heldBackQK).
  function topQK(rec, side, present, any) {
    if (rec.sources && rec.sources.length) return topSources(rec, side, present);
    const big = (top) => (any || Math.abs(top[1]) >= (data.view.qkMinShare || 0) * Math.abs(rec.score || 0) ? [top] : []);
    const col = side === "q" ? 0 : 1;
    const marginals = side === "q" ? rec.queryMarginals : rec.keyMarginals;
    for (const p of rec.pairs) { // raising pairs only, as reports.layout._top_qk_node
      if (!(p[2] > 0)) continue;
      const i = p[col] == null ? undefined : byId.get(p[col]);
      if (i === undefined || !present[i]) continue;
      const own = marginals.find((m) => m[0] === p[col]);
      return big(own ? [i, own[1], 1, null, true] : [i, p[2], 1, p]);
    }
    for (const m of marginals.slice().sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))) {
      const i = m[0] == null ? undefined : byId.get(m[0]);
      if (i !== undefined && present[i]) return big([i, m[1], 1, null, true]);
    }
    return [];
  }
  function fitText(s, n) { s = shown(s); return s.length <= n ? s : s.slice(0, n - 1) + "…"; }

  // ---------------------------------------------------------------------------------- layout
  function nodeSize(kind, lines) {
    const tw = Math.max(...lines.map(textWidth)), th = lines.length * LINE_H;
    let w, h;
    if (kind === "error") { w = tw * 2 + 8; h = th * 2 + 2; }
    else if (kind === "logit") { w = tw + 16; h = th * 1.45 + 8; }
    else if (kind === "axis") { w = tw + 4; h = th; }
    else { w = tw + 14; h = th + 8; }
    return [Math.max(w, 34), Math.max(h, 22)];
  }
  // Rows are stages bottom to top, columns the positions something is drawn at, as in
  // reports.layout: a full cell wraps into rows, its nodes dealt round-robin over them and
  // ordered by the mean x of their neighbours, sweeping up and down. The measures are the
  // page's own (px, the canvas's font, each box as wide as its text), and so are two lanes of
  // tokens, the logits spread over the drawing and a wrap that fits the room at the largest
  // zoom, where the Graphviz drawing aims at an aspect (TARGET_ASPECT).
  function layout(v) {
    const drawn = v.items.map((_, k) => k).filter((k) => v.items[k].drawn);
    for (const k of drawn) v.items[k].size = nodeSize(v.items[k].kind, v.items[k].lines);
    const cells = new Map();
    if (drawn.length) cells.set(0, new Map());
    const order = drawn.slice().sort((a, b) => {
      const x = v.items[a], y = v.items[b];
      return x.stage - y.stage || x.pos - y.pos || (y.score > x.score) - (y.score < x.score) || a - b;
    });
    for (const k of order) {
      const it = v.items[k];
      if (!cells.has(it.stage)) cells.set(it.stage, new Map());
      const byPos = cells.get(it.stage);
      if (!byPos.has(it.pos)) byPos.set(it.pos, []);
      byPos.get(it.pos).push(k);
    }
    const stages = [...cells.keys()].sort((a, b) => a - b);
    const used = [...new Set(drawn.map((k) => v.items[k].pos))].sort((a, b) => a - b);
    const axis = new Map();
    if (meta.positional) {
      for (const p of used) {
        if (!cells.get(0).has(p)) {
          const text = shown(meta.axis[p] || "@" + p);
          axis.set(p, { text, size: nodeSize("axis", [text]) });
        }
      }
    }
    const boxW = (k) => v.items[k].size[0] + NODE_GAP; // a box and its gap, in a row of a cell
    const rowH = new Map();
    for (const s of stages) {
      let h = 22;
      for (const m of cells.get(s).values()) for (const k of m) h = Math.max(h, v.items[k].size[1]);
      rowH.set(s, h);
    }
    const fullest = new Map(stages.map((s) => [s, Math.max(0, ...[...cells.get(s).values()].map((m) => m.length))]));
    const nRows = (s, wrap) => Math.max(1, Math.ceil(fullest.get(s) / wrap));
    // A cell's width is its widest row's: each row of a cell packs its boxes by their own
    // widths (each box at the cell's widest spread a supernode's width over its neighbours:
    // three boxes took 408 px). Which boxes share a row changes as the sweeps below reorder a
    // cell, so a row is measured by the widest boxes it can hold.
    const widest = new Map(); // stage -> position -> the cell's box widths, widest first
    for (const s of stages) widest.set(s, new Map([...cells.get(s)].map(([p, m]) => [p, m.map(boxW).sort((a, b) => b - a)])));
    const sum = (ws) => ws.reduce((a, b) => a + b, 0);
    // The logits (a prompt's top stage, all at the last position) are laid in rows over the
    // whole drawing, ending above their position, not stacked in its column: ten logits took
    // four rows of a 29-token trace's last column, 257 of its 961 px, above empty positions.
    const top = stages[stages.length - 1];
    const spread = meta.positional && stages.length > 1 && cells.get(top).size === 1 && cells.get(top).has(used[used.length - 1]) ? top : null;
    // the widest n boxes of each cell, summed: [0, w1, w1 + w2, ...]
    const sums = new Map();
    for (const s of stages) for (const [p, ws] of widest.get(s)) sums.set(s + "," + p, ws.reduce((a, w) => (a.push(a[a.length - 1] + w), a), [0]));
    const cellW = (s, p, wrap) => {
      const ws = sums.get(s + "," + p);
      let w = ws ? ws[Math.ceil((ws.length - 1) / nRows(s, wrap))] : 0;
      if (s === 0 && axis.has(p)) w = Math.max(w, axis.get(p).size[0] + NODE_GAP);
      return w;
    };
    // Positions are x's in prompt order, each cell centred on its own; a stage's cells keep
    // COLUMN_GAP between them, but a wide cell may reach over positions its stage leaves
    // empty (a column as wide as its widest cell in any stage left a 110-token trace 2305 px
    // wide at 1280x720, most of it blank beside a few wide supernodes). Each stage's name
    // (on both sides) is as wide as it is, not the longest's. With two lanes the tokens take
    // turns on two rows (the last position's on the upper), so neighbouring tokens may
    // overlap across: one row of 17 tokens was 1215 px of that trace's 1646 (three or four
    // lanes the same way, for a long prompt: below).
    const nameW = new Map(stages.map((s) => [s, textWidth(meta.stageNames[s] || "stage " + s) + 12]));
    // a position's lane (0: the upper; the last position's), by lane count
    const fromEnd = new Map(used.map((p, i) => [p, used.length - 1 - i]));
    const laneOf = (p, lanes) => fromEnd.get(p) % lanes;
    const placeX = (wrap, lanes) => {
      const xs = new Map(), last = new Map(); // stage (and lane) -> [x, width] of its last cell so far
      let right = 0, prev = null;
      for (const p of used) {
        let x = prev === null ? 0 : prev + MIN_STEP;
        const here = [];
        for (const s of stages) {
          if (s === spread) continue;
          const w = cellW(s, p, wrap);
          if (!w) continue;
          const key = s === 0 && lanes > 1 ? "0:" + laneOf(p, lanes) : s;
          here.push([key, w, s]);
          const l = last.get(key);
          x = Math.max(x, l ? l[0] + (l[1] + w) / 2 + COLUMN_GAP - NODE_GAP : nameW.get(s) + w / 2);
        }
        for (const [key, w, s] of here) { last.set(key, [x, w]); right = Math.max(right, x + w / 2 + nameW.get(s)); }
        xs.set(p, x);
        prev = x;
      }
      // the spread stage ends above its position, and its rows (as many as the wrap would
      // stack in its column, at the fewest) lie inside the drawing, clear of its names: its
      // width came from the positions alone, and three tokens' ten logits ran past its edge
      if (spread !== null) {
        const ws = widest.get(spread).get(used[used.length - 1]);
        const row = sum(ws.slice(0, Math.ceil(ws.length / nRows(spread, wrap))));
        right = Math.max(right, xs.get(used[used.length - 1]) + nameW.get(spread), row + 2 * nameW.get(spread));
      }
      return { xs, right: Math.max(right, 100) };
    };
    // the spread stage's rows: as many as its boxes need side by side over the drawing's
    // width, never more than the wrap would stack in its column
    const spreadRows = (wrap, right) => {
      const ws = widest.get(spread).get(used[used.length - 1]);
      const room = Math.max(right - 2 * nameW.get(spread), sum(ws.slice(0, Math.ceil(ws.length / nRows(spread, wrap)))));
      let k = 0;
      for (let acc = 0; k < ws.length && acc + ws[k] <= room + 1e-6; k++) acc += ws[k];
      return Math.ceil(ws.length / Math.max(1, k));
    };
    const rowsOf = (s, wrap, right, lanes) => (s === spread ? spreadRows(wrap, right) : nRows(s, wrap) * (s === 0 ? lanes : 1));
    // the drawing's width and height (as set below) when big cells wrap at `wrap` nodes a row
    const extent = (wrap, lanes) => {
      const { right } = placeX(wrap, lanes);
      let h = meta.positional && axis.size ? 4 : 0;
      for (const s of stages) h += rowsOf(s, wrap, right, lanes) * (rowH.get(s) + ROW_GAP) - ROW_GAP + STAGE_GAP;
      return [right, h + 8];
    };
    // the wrap (and lanes) that let the drawing fit the room the page gives it at the largest
    // zoom (fitZoom's; ties go to the wider, fewer rows, one lane): matching the canvas's
    // aspect instead left a 29-token graph 1.9x as wide as tall in a 1.3x canvas. Three or four
    // lanes only where two leave it wider than the room at MIN_ZOOM: a 110-token trace was
    // 4070 px wide in two (its whole drawing fitted a 1400x900 window at zoom 0.24), 2447 in
    // four (0.40); a shorter prompt's tokens keep their one or two rows.
    const [roomW, roomH] = fitBox(false);
    let biggest = 1;
    for (const s of stages) for (const m of cells.get(s).values()) biggest = Math.max(biggest, m.length);
    let wrap = biggest, lanes = 1, best = -Infinity;
    const tryLanes = (ls) => {
      for (const l of ls) {
        for (let w = biggest; w >= 1; w--) {
          const [x, y] = extent(w, l), fit = Math.min(MAX_ZOOM, roomW / x, roomH / y);
          if (fit > best + 1e-9) { best = fit; wrap = w; lanes = l; }
        }
      }
    };
    tryLanes(meta.positional && used.length > 2 ? [1, 2] : [1]);
    if (best < MIN_ZOOM && meta.positional) tryLanes([3, 4].filter((l) => used.length > 2 * l));
    const { xs: columns, right } = placeX(wrap, lanes);
    const width = right;
    const rowY = new Map(), bands = new Map(), rows = new Map();
    for (const s of stages) rows.set(s, rowsOf(s, wrap, right, lanes));
    // rows bottom to top, each `hOf(s, r)` tall; the drawing's height
    const stack = (hOf) => {
      let y = meta.positional && axis.size ? 4 : 0; // y grows upwards here; flipped below
      for (const s of stages) {
        const bottom = y, n = rows.get(s);
        y += STAGE_GAP / 2;
        for (let r = 0; r < n; r++) {
          rowY.set(s + "," + r, y + hOf(s, r) / 2);
          y += hOf(s, r) + (r + 1 < n ? ROW_GAP : 0);
        }
        y += STAGE_GAP / 2;
        bands.set(s, [bottom, y]);
      }
      return y + 8;
    };
    stack((s) => rowH.get(s));
    const xy = new Map(), rowKey = new Map();
    // the first row of a position's tokens: the lowest lane's from 0, each other's above it
    const firstRow = (s, p) => (s === 0 ? (lanes - 1 - laneOf(p, lanes)) * (rows.get(0) / lanes) : 0);
    // a cell's member j goes to row j % n; each row's boxes side by side, centred on the
    // position (the spread stage's rows kept inside the drawing, clear of its names)
    const place = (s, p, members) => {
      const n = s === 0 ? rows.get(0) / lanes : rows.get(s), r0 = firstRow(s, p);
      for (let r = 0; r < n; r++) {
        const row = members.filter((_, j) => j % n === r), rw = sum(row.map(boxW));
        let x = columns.get(p) - rw / 2;
        if (s === spread) x = Math.max(nameW.get(s), Math.min(x, right - nameW.get(s) - rw));
        for (const k of row) {
          xy.set(k, [x + boxW(k) / 2, rowY.get(s + "," + (r0 + r))]);
          rowKey.set(k, s + "," + (r0 + r));
          x += boxW(k);
        }
      }
    };
    for (const s of stages) for (const [p, m] of cells.get(s)) place(s, p, m);
    const below = new Map(drawn.map((k) => [k, []])), above = new Map(drawn.map((k) => [k, []]));
    for (const e of [...v.edges, ...v.qkEdges]) {
      if (above.has(e.s) && below.has(e.t)) { above.get(e.s).push(e.t); below.get(e.t).push(e.s); }
    }
    const meanX = (ks, d) => (ks.length ? ks.reduce((a, k) => a + xy.get(k)[0], 0) / ks.length : d);
    for (let sweep = 0; sweep < SWEEPS; sweep++) {
      const up = sweep % 2 === 0, nb = up ? below : above;
      for (const s of up ? stages : stages.slice().reverse()) {
        for (const [p, m] of cells.get(s)) {
          const key = new Map(m.map((k) => [k, meanX(nb.get(k), xy.get(k)[0])]));
          m.sort((a, b) => key.get(a) - key.get(b));
          place(s, p, m);
        }
      }
    }
    // Each row as tall as its own tallest box, now that the sweeps have dealt them (a stage's
    // every row took its tallest supernode's six lines: 214 px for two rows of a real trace)
    const rowTall = new Map();
    for (const s of stages) for (const [p, m] of cells.get(s)) place(s, p, m);
    for (const k of drawn) {
      const key = rowKey.get(k);
      rowTall.set(key, Math.max(rowTall.get(key) || 22, v.items[k].size[1]));
    }
    for (const [p, a] of axis) {
      const key = "0," + firstRow(0, p);
      rowTall.set(key, Math.max(rowTall.get(key) || 22, a.size[1]));
    }
    const height = stack((s, r) => rowTall.get(s + "," + r) || 22);
    for (const s of stages) for (const [p, m] of cells.get(s)) place(s, p, m);
    const flip = (y) => height - y;
    for (const [k, [px, py]] of xy) xy.set(k, [px, flip(py)]);
    const axisXY = new Map();
    for (const [p, a] of axis) axisXY.set(p, [columns.get(p), flip(rowY.get("0," + firstRow(0, p)))]);
    const bandsY = new Map();
    for (const [s, [b, t]] of bands) bandsY.set(s, [flip(t), flip(b)]);
    return { xy, width, height, bands: bandsY, axis, axisXY, columns, wrap, lanes };
  }

  // --------------------------------------------------------------------------------- drawing
  const ui = {};
  function buildChrome() {
    ui.budget = el("input", { type: "number", min: "0", step: "1", "aria-label": "node budget" });
    ui.budgetRange = el("input", { type: "range", min: "0", step: "1", "aria-label": "node budget slider" });
    ui.budgetOf = el("span", { class: "muted budget-of" });
    ui.edgeRange = el("input", { type: "range", min: "0", max: "1000", step: "1", "aria-label": "edge threshold" });
    // the threshold typed: a text box, so that what was typed is what a refusal quotes
    ui.edgeValue = el("input", { type: "text", inputmode: "decimal", class: "value", size: "7", "aria-label": "edge threshold value",
      title: "the least |weight| of an edge drawn: type a number >= 0 and press Enter" });
    ui.search = el("input", { type: "search", placeholder: "search token, label or concept", "aria-label": "search", title: "Enter opens the first result" });
    ui.searchCount = el("span", { class: "muted" });
    ui.groupName = el("input", { type: "text", placeholder: "supernode name", size: "14", "aria-label": "supernode name", title: "Enter groups the nodes picked, as the Group button does" });
    ui.groupButton = el("button", { type: "button", class: "group" }, "Group");
    ui.clearPins = el("button", { type: "button", class: "clear-pins" }, "Clear pins");
    ui.ungroupAll = el("button", { type: "button", class: "ungroup-all",
      title: "dissolve every supernode: their members are then drawn by the budget alone" }, "Ungroup all");
    // a zoom keeps the point at the canvas's centre where it is (the scroll offsets stayed, so
    // a long trace's first view, scrolled to its last position, slid to an empty stretch on +)
    const zoom = (f) => () => {
      const c = ui.canvas, at = (pos, size, whole) => (whole ? (pos + size / 2) / whole : 0.5);
      const x = at(c.scrollLeft, c.clientWidth, c.scrollWidth), y = at(c.scrollTop, c.clientHeight, c.scrollHeight);
      state.zoom = (state.zoom || fitZoom()) * f;
      state.whole = false;
      applyZoom();
      c.scrollLeft = x * c.scrollWidth - c.clientWidth / 2;
      c.scrollTop = y * c.scrollHeight - c.clientHeight / 2;
    };
    // How to use the page and read a box: one line behind a toggle (its two lines took 36 of
    // a 1280x720 window's 720 px in every first view), the whole text in the toggle's tooltip
    const helpText = "click (Tab, Enter): details · ctrl/shift-click (space): pick for a supernode · p: pin a node · hover: paths · a head's box: " +
      (meta.positional ? "→the key it reads (13%→ where that key brings under half its activation)" : "its QK group") + "; a feature's: ↑the token it promotes most" +
      (data.mechanisms ? " · thick outline, dark edges: the summary's predicting heads and top paths · ⚑ check flagged: its ablation check (the panel says how)" : "") +
      " · dashed q/k: where a head's query and key come from, faint until its head is hovered or clicked";
    ui.zoomNote = el("span", { class: "zoom-note muted" });
    ui.help = el("details", { class: "help" }, el("summary", { title: helpText }, "keys and boxes"), el("span", { class: "muted" }, helpText));
    ui.help.addEventListener("toggle", refit);
    const toolbar = el("div", { class: "toolbar" },
      // The budget counts what it ranks (heads, features, errors, constants), not every node:
      // tokens and targets are drawn beside it (the status line counts them all); a supernode
      // counts as one (computeView).
      el("label", { title: `the top ${INNER_WORDS} by ${data.view.rankedBy} are drawn, a supernode counting as one (it is always drawn whole); tokens and targets are drawn beside them` },
        "Top", ui.budgetRange, ui.budget, ui.budgetOf),
      el("label", {}, "Edges |w| ≥", ui.edgeRange, ui.edgeValue),
      el("label", {}, ui.search, ui.searchCount),
      el("span", {}, ui.groupName, " ", ui.groupButton, " ", ui.clearPins, " ", ui.ungroupAll),
      el("span", {},
        el("button", { type: "button", onclick: zoom(1 / 1.25), title: "zoom out" }, "−"), " ",
        el("button", { type: "button", class: "fit", onclick: () => { state.zoom = null; state.whole = true; applyZoom(); },
          title: "fit the whole drawing to the canvas (the first view keeps its text at 70% or more, and scrolls where that is too wide)" }, "fit"), " ",
        el("button", { type: "button", onclick: zoom(1.25), title: "zoom in" }, "+"), " ", ui.zoomNote),
      ui.help);
    ui.results = el("div", { class: "results" });
    // the status line: its counts, then a button that lists what the drawing leaves out
    ui.statusText = el("span", { class: "status-text" });
    ui.leftOutButton = el("button", { type: "button", class: "left-out-toggle", "aria-expanded": "false" });
    ui.status = el("div", { class: "status" }, ui.statusText, " ", ui.leftOutButton);
    ui.leftOut = el("div", { class: "left-out", hidden: "" });
    ui.message = el("div", { class: "message", role: "status", "aria-live": "polite" });
    ui.svg = svgEl("svg", { role: "img" });
    ui.canvas = el("div", { class: "canvas" });
    ui.canvas.append(ui.svg);
    ui.panel = el("aside", { class: "panel" });
    ui.main = el("div", { class: "main" }, ui.canvas, ui.panel);
    root.replaceChildren(toolbar, ui.results, ui.status, ui.leftOut, ui.message, ui.main);

    // The box always shows the budget in use: a value past the ends is clamped and written
    // back, and an empty box or a non-number is ignored (a reviewer's "1000" stayed in the
    // box at 187, and "abc" set the budget to 0).
    const setBudget = (text) => {
      const n = String(text).trim() === "" ? NaN : Number(text);
      if (Number.isFinite(n)) {
        const b = Math.max(0, Math.min(budgetMax(), Math.round(n)));
        if (b !== state.budget) { state.budget = b; update(); return; }
      }
      updateControls();
    };
    ui.budget.addEventListener("change", () => setBudget(ui.budget.value));
    ui.budgetRange.addEventListener("input", () => setBudget(ui.budgetRange.value));
    ui.edgeRange.addEventListener("input", () => { state.edgeMin = sliderToEdge(Number(ui.edgeRange.value)); update(); });
    // The box beside the slider takes any threshold, as the URL does (the slider's steps are
    // logarithmic, 4 digits); a non-number, a negative or an empty box is refused with a note
    // and the box shows the threshold in use again.
    const setEdge = () => {
      const text = ui.edgeValue.value.trim(), m = text === "" ? NaN : Number(text);
      edgeTyped = false;
      if (!(Number.isFinite(m) && m >= 0)) {
        updateControls();
        say(`Edge threshold ${quote(text)} refused: not a number >= 0 (it stays ${fmt(state.edgeMin, 4)}).`);
        if (document.activeElement === ui.edgeValue) ui.edgeValue.select(); // to type again
        return;
      }
      if (m !== state.edgeMin) { state.edgeMin = m; update(); } else updateControls();
    };
    ui.edgeValue.addEventListener("input", () => { edgeTyped = true; });
    for (const kind of ["change", "blur"]) ui.edgeValue.addEventListener(kind, () => { if (edgeTyped) setEdge(); });
    ui.edgeValue.addEventListener("keydown", (ev) => {
      // (an Enter on the shown value keeps the threshold whole: it is rounded there)
      if (ev.key === "Enter" && !ev.isComposing) { ev.preventDefault(); if (edgeTyped) setEdge(); }
    });
    ui.search.addEventListener("input", () => {
      const tall = ui.results.offsetHeight;
      state.query = ui.search.value;
      markSearch();
      if (ui.results.offsetHeight !== tall) refit(); // the results take room above the canvas
    });
    // Enter in the search box opens its first result, as a click on it would; in the name box
    // it groups, as the Group button does (a review: Enter did nothing in either)
    ui.search.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter" || ev.isComposing) return;
      ev.preventDefault();
      const first = ui.results.querySelector("button.result");
      if (first) first.click();
      else if (state.query.trim()) say(`Nothing found for ${quote(state.query.trim())}.`);
    });
    ui.groupName.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter" || ev.isComposing) return;
      ev.preventDefault();
      if (!ui.groupButton.disabled) makeGroup();
      else say("Nothing to group: pick two nodes or more first (ctrl/shift-click, or space on a focused node).");
    });
    ui.groupButton.addEventListener("click", makeGroup);
    ui.clearPins.addEventListener("click", () => { state.pinned.clear(); update(); });
    ui.leftOutButton.addEventListener("click", () => {
      ui.leftOut.hidden = !ui.leftOut.hidden;
      ui.leftOutButton.setAttribute("aria-expanded", String(!ui.leftOut.hidden));
      updateControls();
      refit(); // the list takes room above the canvas
    });
    ui.ungroupAll.addEventListener("click", () => {
      regroup(() => { state.groups = []; });
      if (state.clicked && state.clicked.group !== undefined) state.clicked = null;
      update();
    });
    ui.svg.addEventListener("mouseleave", () => setHover(null));
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") keepingFocus(() => { state.picks.clear(); setHover(null); update(); });
    });
    // Links of the node table below select the node here instead of changing the URL's hash.
    document.addEventListener("click", (ev) => {
      const a = ev.target.closest && ev.target.closest('a[href^="#' + NODE_ANCHOR + '"]');
      if (!a) return;
      const i = byAnchor.get(a.getAttribute("href"));
      if (i === undefined) return;
      ev.preventDefault();
      const row = tableRows.get(nodes[i].id);
      if (row) row.scrollIntoView({ block: "center" });
      select({ node: i });
    });
    // A hash typed or pasted by hand is the whole state: what it leaves out is the page's own
    // (``defaults``), as when the page is opened with it.
    window.addEventListener("hashchange", () => {
      if (!location.hash.slice(1).includes("=")) return;
      Object.assign(state, {
        budget: defaults.budget, edgeMin: defaults.edgeMin, pinned: new Set(defaults.pinned),
        groups: defaults.groups.map((g) => ({ name: g.name, members: [...g.members] })), clicked: defaults.clicked,
      });
      const notes = [];
      readHash(notes);
      update();
      showIgnored(notes);
    });
  }
  // The edge slider is logarithmic between the weakest and strongest |weight| of the graph.
  let wLo = Infinity, wHi = 0;
  for (const w of wt) { const a = Math.abs(w); if (a > 0) { wLo = Math.min(wLo, a); wHi = Math.max(wHi, a); } }
  if (!(wHi > 0)) { wLo = 1e-6; wHi = 1; }
  function sliderToEdge(v) {
    if (v <= 0) return 0;
    return Number((wLo * Math.pow(wHi / wLo, (v - 1) / 999)).toPrecision(4));
  }
  function edgeToSlider(m) {
    if (m <= 0 || wHi <= wLo) return m <= 0 ? 0 : 1000;
    return Math.max(1, Math.min(1000, Math.round(1 + (999 * Math.log(m / wLo)) / Math.log(wHi / wLo))));
  }

  // The first view: the canvas's width and the height the window gives it (the logits at the
  // top and the prompt's tokens at the bottom in one view), but text no smaller than MIN_ZOOM
  // (then the canvas scrolls, starting at the top right, where the last position's nodes and
  // the logits are; a global graph's at its top middle). The "fit" button fits the whole
  // drawing, at whatever zoom that takes (state.whole): it did the first view's, so a
  // 110-token trace's scrolled there too, 1882 px of it off a 1400x900 window. The canvas is
  // as tall as the drawing, within MIN_HEIGHT and what the window shows below the controls
  // when the page is at its top (at 76% of the window, and then at 90% below 165 px of
  // controls, reviewers found the prompt's tokens cut off at first).
  const MIN_ZOOM = 0.7, MAX_ZOOM = 1.5, MIN_HEIGHT = 420, MARGIN = 8, SCROLLBAR = 24, FIT_SLACK = 4;
  const RELAYOUT_MS = 120; // after the last resize event
  const STACKED_HEIGHT = 0.65; // of the window: the most a stacked drawing takes
  function stacked() { return getComputedStyle(ui.main).flexDirection === "column"; }
  function room() {
    // a narrow window puts the panel under the drawing (viewer.css): at most STACKED_HEIGHT
    if (stacked()) return Math.max(MIN_HEIGHT / 2, Math.round(window.innerHeight * STACKED_HEIGHT));
    const top = ui.main.getBoundingClientRect().top + window.scrollY;
    return Math.max(MIN_HEIGHT, Math.round(window.innerHeight - top - MARGIN));
  }
  // The box a drawing is fitted to: the canvas's width (its scrollbar's room included) and
  // the room's height, each less a scrollbar's where the drawing scrolls at MIN_ZOOM (a
  // reviewer's fitted drawing was 11 px wider than the canvas, its stage names cut, when a
  // tall drawing brought a vertical one); a drawing that fits has none, and keeping their
  // 24 px each way left 2 px of a 29-token trace off a 1280x720 window.
  function fitBox(bars) {
    const b = bars ? SCROLLBAR : FIT_SLACK;
    return [(ui.canvas.offsetWidth || 1000) - 4 - b, room() - b];
  }
  function fitZoom() {
    if (!view || !view.layout) return 1;
    const L = view.layout, zoom = ([w, h]) => Math.min(MAX_ZOOM, w / L.width, h / L.height);
    const z = zoom(fitBox(false));
    return z >= MIN_ZOOM || state.whole ? z : Math.max(MIN_ZOOM, zoom(fitBox(true)));
  }
  function applyZoom() {
    if (!view || !view.layout) return;
    const z = state.zoom || fitZoom(), L = view.layout;
    const w = Math.round(L.width * z), h = Math.round(L.height * z);
    ui.svg.setAttribute("width", String(w));
    ui.svg.setAttribute("height", String(h));
    // a horizontal scrollbar only where the drawing is wider than the canvas
    const tall = h + (w > (ui.canvas.offsetWidth || 1000) - 4 ? SCROLLBAR : FIT_SLACK);
    ui.main.style.height = Math.max(MIN_HEIGHT, Math.min(room(), tall)) + "px";
    // stacked, the canvas is as tall as the drawing up to its room (a short global graph left
    // 130 px blank above the panel); beside the panel the flex row sizes it
    ui.canvas.style.height = stacked() ? Math.min(room(), tall) + "px" : "";
    // the zoom, and where the drawing scrolls, that "fit" shows it whole
    const over = w > (ui.canvas.offsetWidth || 1000) - 4 || h > room();
    ui.zoomNote.textContent = Math.round(z * 100) + "%" + (over ? " (scrolls: fit shows it all)" : "");
    ui.zoomNote.title = over ? "the drawing is larger than the canvas at this zoom; fit shows the whole of it" : "";
    // a prompt's graph starts at its right (the last position, the logits); a global graph,
    // whose units sit side by side with no position, at its middle (its start unit is there)
    const c = ui.canvas;
    const start = () => { c.scrollLeft = meta.positional ? c.scrollWidth : (c.scrollWidth - c.clientWidth) / 2; };
    // again once the layout has settled: a vertical scrollbar that comes with the new height
    // widens the scroll range, and the right stage names sat 15 px under it (a review, 900 px)
    if (!state.zoom) { start(); requestAnimationFrame(() => { if (!state.zoom) start(); }); }
  }

  // The room changed (the window, a list or the help above the canvas): unless the reader
  // zoomed, the first view is laid out again, its big cells wrapped to the new room (they
  // kept the first window's rows: a page opened at 1920 px and narrowed to 1280 scrolled),
  // and fitted.
  function refit() {
    if (!view || !view.layout) return;
    if (!state.zoom) {
      const L = layout(view);
      if (L.wrap !== view.layout.wrap || L.lanes !== view.layout.lanes || L.width !== view.layout.width || L.height !== view.layout.height) {
        setHover(null);
        render();
        return;
      }
    }
    applyZoom();
  }

  function nodeShape(kind, w, h) {
    if (kind === "error") return svgEl("polygon", { class: "shape", points: `0,${-h / 2} ${w / 2},0 0,${h / 2} ${-w / 2},0` });
    if (kind === "logit") {
      const roof = Math.min(10, h * 0.3);
      return svgEl("polygon", { class: "shape", points: `${-w / 2},${h / 2} ${w / 2},${h / 2} ${w / 2},${-h / 2 + roof} 0,${-h / 2} ${-w / 2},${-h / 2 + roof}` });
    }
    const rx = kind === "lorsa" || kind === "supernode" ? 7 : kind === "embedding" ? 2 : 3;
    return svgEl("rect", { class: "shape", x: -w / 2, y: -h / 2, width: w, height: h, rx });
  }
  function itemLabel(it) {
    if (it.node !== undefined) return nodes[it.node].label;
    const also = it.known && it.name !== it.known.supernode ? ": the mechanism summary's " + it.known.supernode : "";
    return it.name + " (supernode of " + it.members.length + also + ")";
  }

  function render() {
    view = computeView();
    const L = layout(view);
    view.layout = L;
    const svg = ui.svg;
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${L.width} ${L.height}`);
    const gBands = svgEl("g"), gEdges = svgEl("g"), gQK = svgEl("g"), gNodes = svgEl("g");
    svg.append(gBands, gEdges, gQK, gNodes);
    let odd = false;
    for (const [s, [y0, y1]] of [...L.bands].sort((a, b) => b[0] - a[0])) {
      gBands.append(svgEl("rect", { class: "band" + (odd ? " odd" : ""), x: 0, y: y0, width: L.width, height: y1 - y0 }));
      const t = svgEl("text", { class: "stage-name", x: 6, y: (y0 + y1) / 2 + 4 });
      const right = svgEl("text", { class: "stage-name", x: L.width - 6, y: (y0 + y1) / 2 + 4, "text-anchor": "end" });
      t.textContent = right.textContent = meta.stageNames[s] || "stage " + s;
      gBands.append(t, right);
      odd = !odd;
    }
    for (const [p, a] of L.axis) {
      const [x, y] = L.axisXY.get(p);
      const t = svgEl("text", { class: "axis", x, y: y + 4, "text-anchor": "middle" });
      t.textContent = a.text;
      gBands.append(t);
    }
    const maxW = maxOf(view.edges, (e) => Math.abs(e.w), 1e-12);
    // the drawn items holding a member of each top path's stop; an edge from a stop's item to
    // the next stop's is on a top path
    const itemsOf = (ids) => new Set(ids.map((id) => view.itemOf[byId.get(id)]).filter((k) => k >= 0));
    const onPath = new Set(pathSteps.flatMap(([a, b]) => {
      const from = itemsOf(a), to = itemsOf(b);
      return [...from].flatMap((s) => [...to].map((t) => s + ">" + t));
    }));
    const predicting = itemsOf([...predictingIds]);
    // the other edges lighter only where a top path is drawn (a page with no summary keeps them)
    svg.classList.toggle("has-path", view.edges.some((e) => onPath.has(e.s + ">" + e.t)));
    view.edgeEls = view.edges.map((e) => {
      const path1 = onPath.has(e.s + ">" + e.t);
      const [x1, y1] = L.xy.get(e.s), [x2, y2] = L.xy.get(e.t);
      const h1 = view.items[e.s].size[1] / 2, h2 = view.items[e.t].size[1] / 2;
      const path = curve(x1, y1 - h1, x2, y2 + h2);
      const p = svgEl("path", { class: "edge " + (e.w > 0 ? "pos" : "neg") + (e.token ? " token" : "") + (path1 ? " on-path" : ""), d: path, "stroke-width": (0.6 + (4 * Math.abs(e.w)) / maxW).toFixed(2) });
      p.dataset.s = itemKey(view.items[e.s]);
      p.dataset.t = itemKey(view.items[e.t]);
      p.dataset.w = String(e.w);
      const title = svgEl("title");
      title.textContent = shown(itemLabel(view.items[e.s]) + " → " + itemLabel(view.items[e.t]) + ": " + signed(e.w) +
        (e.token ? TOKEN_EDGE_NOTE : "") + (path1 ? " · on a top path of the mechanism summary" : ""));
      p.append(title);
      gEdges.append(p);
      return p;
    });
    const spots = qkLabelSpots(view, L);
    view.qkEls = view.qkEdges.map((e, j) => {
      const [x1, y1] = L.xy.get(e.s), [x2, y2] = L.xy.get(e.t);
      const h1 = view.items[e.s].size[1] / 2, h2 = view.items[e.t].size[1] / 2;
      const g = svgEl("g", { class: "qk-edge" });
      g.dataset.s = itemKey(view.items[e.s]);
      g.dataset.t = itemKey(view.items[e.t]);
      g.dataset.side = e.side;
      g.append(svgEl("path", { d: curve(x1, y1 - h1, x2, y2 + h2) }));
      const [lx, ly] = spots[j];
      const label = svgEl("text", { class: "qk-label", x: lx.toFixed(1), y: ly.toFixed(1), dy: "0.35em", "text-anchor": "middle" });
      label.textContent = e.side;
      const title = svgEl("title");
      title.textContent = shown((e.side === "q" ? "query side of " : "key side of ") + itemLabel(view.items[e.t]) + ": " + itemLabel(view.items[e.s]) + " " + signed(e.v) + qkEdgeWhat(e));
      g.append(label, title);
      gQK.append(g);
      return g;
    });
    view.nodeEls = new Map();
    // in reading order (top row first, left to right), which Tab follows (a reviewer's Tab
    // went through the supernodes first, then in no order of the picture)
    const reading = view.items.map((it, k) => k).filter((k) => view.items[k].drawn);
    reading.sort((a, b) => L.xy.get(a)[1] - L.xy.get(b)[1] || L.xy.get(a)[0] - L.xy.get(b)[0]);
    reading.forEach((k) => {
      const it = view.items[k];
      const [x, y] = L.xy.get(k), [w, h] = it.size;
      const g = svgEl("g", { class: "node kind-" + it.kind + (it.flagged ? " flagged" : "") + (it.qkSource ? " qk-source" : "") +
        (predicting.has(k) ? " predicting" : ""), transform: `translate(${x.toFixed(1)},${y.toFixed(1)})` });
      g.dataset.item = String(k);
      if (it.node !== undefined) g.dataset.id = nodes[it.node].id;
      else g.dataset.group = String(it.group);
      g.append(nodeShape(it.kind, w, h));
      const y0 = -((it.lines.length - 1) * LINE_H) / 2 + 4;
      it.lines.forEach((line, r) => {
        const t = svgEl("text", { x: 0, y: y0 + r * LINE_H, "text-anchor": "middle" });
        t.textContent = shown(line);
        g.append(t);
      });
      const title = svgEl("title");
      const titled = it.known && it.known.title && it.known.title !== it.known.name ? " · " + it.known.title : "";
      title.textContent = shown(itemLabel(it) + titled + (predicting.has(k) ? " · the predicting heads of the mechanism summary" : "") +
        (it.flagged ? ": its ablation check is flagged (the panel says how)" : ""));
      g.append(title);
      g.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (ev.ctrlKey || ev.metaKey || ev.shiftKey) togglePick(it);
        else select(it.node !== undefined ? { node: it.node } : { group: it.group });
      });
      g.addEventListener("mouseenter", () => setHover(k));
      g.setAttribute("tabindex", "0"); // keyboard: Tab to a node, Enter shows it
      g.addEventListener("keydown", (ev) => { // Enter: details; space: pick; p: pin
        if (ev.key === "Enter") select(it.node !== undefined ? { node: it.node } : { group: it.group });
        else if (ev.key === " ") { ev.preventDefault(); togglePick(it); }
        else if (ev.key === "p" && !ev.ctrlKey && !ev.metaKey && !ev.altKey) { // (ctrl-p prints, and pinned a node before)
          if (it.node !== undefined) keepingFocus(() => togglePin(it.node));
          else say(`Supernode ${quote(it.name)} is not pinned: a supernode is always drawn whole, whatever the budget (pin its members from their panels to keep them after ungrouping).`);
        }
      });
      g.addEventListener("focus", () => setHover(k));
      g.addEventListener("blur", () => setHover(null));
      gNodes.append(g);
      view.nodeEls.set(k, g);
    });
    markClasses();
    markSearch();
    updateControls();
    updateTable();
    applyZoom(); // after the status line and results are written: room() measures below them
    if (!drawnOnce) {
      drawnOnce = true;
      performance.mark("viewer:drawn");
      requestAnimationFrame(() => setTimeout(() => performance.mark("viewer:painted"), 0));
      root.dataset.ready = "1";
    }
  }
  // What a QK edge's value is: a source group's total, the node's own total over the other
  // side (a record without sources), or one pair's term where the record has no such total.
  function qkEdgeWhat(e) {
    if (e.n > 1) return ` in all, from the ${e.n} nodes of its group (this one its strongest drawn)`;
    if (e.pair) {
      const other = e.pair[e.side === "q" ? 1 : 0], i = other == null ? undefined : byId.get(other);
      const name = other == null ? "bias" : i !== undefined ? nodes[i].label : ((data.refs || {})[other] || {}).label || other;
      return ` (one pair's term, with ${name} on the ${e.side === "q" ? "key" : "query"} side; the record holds no total of this node)`;
    }
    return e.total ? ` (its terms with every ${e.side === "q" ? "key" : "query"}-side node, summed)` : "";
  }
  // An edge from the top of its source's box to the bottom of its target's: a cubic whose
  // control points lie straight above and below its ends (`curveY`: their y's).
  function curveY(y1, y2) {
    const dy = Math.max(20, Math.abs(y1 - y2) / 2);
    return y1 > y2 ? [y1 - dy, y2 + dy] : [y1 + dy, y2 - dy];
  }
  function curve(x1, y1, x2, y2) {
    const [c1, c2] = curveY(y1, y2);
    return `M${x1.toFixed(1)},${y1.toFixed(1)} C${x1.toFixed(1)},${c1.toFixed(1)} ${x2.toFixed(1)},${c2.toFixed(1)} ${x2.toFixed(1)},${y2.toFixed(1)}`;
  }
  function curveAt(x1, y1, x2, y2, t) {
    const [c1, c2] = curveY(y1, y2), u = 1 - t;
    const a = u * u * u, b = 3 * u * u * t, c = 3 * u * t * t, d = t * t * t;
    return [(a + b) * x1 + (c + d) * x2, a * y1 + b * c1 + c * c2 + d * y2];
  }
  // Where each QK edge's q or k goes: on its edge, at the point nearest its middle (the head's
  // side first) where no box meets the letter, nor a letter placed before it. The boxes are
  // drawn over the edges, and at the edge's middle 41 of 83 letters of a 29-token trace met a
  // box (a review: q could not be told from k but by the tooltip). Failing that, beside the
  // edge; then clear of the boxes alone, else where the least of it lies under one.
  // the letter's half width and height, px: 11px bold, 6.9 x 11.8 and off its centre by up to
  // 0.4 (a review found 9 px letters, 6.3 on screen at zoom 0.7, hard to tell apart)
  const QK_LABEL = [4, 6.5], QK_STEPS = 40;
  function qkLabelSpots(v, L) {
    const rects = [];
    for (const [k, [x, y]] of L.xy) {
      const [w, h] = v.items[k].size;
      rects.push([x - w / 2 - 1, y - h / 2 - 1, x + w / 2 + 1, y + h / 2 + 1]); // and its border
    }
    const overlap = (r, list) => {
      let area = 0;
      for (const b of list) {
        const dx = Math.min(r[2], b[2]) - Math.max(r[0], b[0]), dy = Math.min(r[3], b[3]) - Math.max(r[1], b[1]);
        if (dx > 0 && dy > 0) area += dx * dy;
      }
      return area;
    };
    // t from the middle outwards, the head's end (t = 1) first at each distance
    const ts = [0.5];
    for (let d = 1; d < QK_STEPS / 2; d++) ts.push(0.5 + d / QK_STEPS, 0.5 - d / QK_STEPS);
    // beside its edge (touching it) only where no spot on it is free: a head's q and k edges
    // from one source are one curve
    const tries = [...ts.map((t) => [t, 0]), ...ts.flatMap((t) => [[t, 2 * QK_LABEL[0]], [t, -2 * QK_LABEL[0]]])];
    const placed = [];
    return v.qkEdges.map((e) => {
      const [x1, y1] = L.xy.get(e.s), [x2, y2] = L.xy.get(e.t);
      const ya = y1 - v.items[e.s].size[1] / 2, yb = y2 + v.items[e.t].size[1] / 2;
      let best = null, bestCost = Infinity;
      for (const [t, dx] of tries) {
        const [cx, y] = curveAt(x1, ya, x2, yb, t), x = cx + dx;
        const r = [x - QK_LABEL[0], y - QK_LABEL[1], x + QK_LABEL[0], y + QK_LABEL[1]];
        if (r[0] < 0 || r[2] > L.width || r[1] < 0 || r[3] > L.height) continue;
        const under = overlap(r, rects), cost = under > 0 ? 1e6 + under : overlap(r, placed) > 0 ? 1 : 0;
        if (cost < bestCost) { best = [x, y, r]; bestCost = cost; }
        if (cost === 0) break;
      }
      if (!best) { const [x, y] = curveAt(x1, ya, x2, yb, 0.5); best = [x, y, [x, y, x, y]]; }
      placed.push(best[2]);
      return [best[0], best[1]];
    });
  }

  // Hovering an item highlights every drawn path into it and out of it (QK edges count as
  // inputs of the head they point to).
  function setHover(k) {
    if (hovered === k || !view) return;
    hovered = k;
    ui.svg.classList.toggle("hovering", k != null);
    for (const g of view.nodeEls.values()) g.classList.remove("hl");
    view.edgeEls.forEach((p) => p.classList.remove("hl"));
    view.qkEls.forEach((p) => p.classList.remove("hl"));
    if (k == null) return;
    const all = [...view.edges.map((e, j) => [e, view.edgeEls[j]]), ...view.qkEdges.map((e, j) => [e, view.qkEls[j]])];
    const reach = (from, to) => {
      const seen = new Set([k]), stack = [k];
      while (stack.length) {
        const x = stack.pop();
        for (const [e, elem] of all) {
          if (e[from] !== x) continue;
          elem.classList.add("hl");
          if (!seen.has(e[to])) { seen.add(e[to]); stack.push(e[to]); }
        }
      }
      return seen;
    };
    for (const j of [...reach("t", "s"), ...reach("s", "t")]) {
      const g = view.nodeEls.get(j);
      if (g) g.classList.add("hl");
    }
  }

  // The drawn item that shows the clicked node or supernode: a node drawn inside a supernode
  // marks the supernode (a reviewer found nothing marked for a member followed from the panel).
  function selectedItem() {
    const c = state.clicked;
    if (!view || !c) return -1;
    const k = c.node !== undefined ? view.itemOf[c.node] : view.items.findIndex((it) => it.group === c.group);
    return k >= 0 && view.items[k].drawn ? k : -1;
  }
  function markClasses() {
    if (!view) return;
    const chosen = selectedItem();
    for (const [k, g] of view.nodeEls) {
      const it = view.items[k];
      g.classList.toggle("pinned", it.node !== undefined && state.pinned.has(it.node));
      g.classList.toggle("picked", (it.node !== undefined ? [it.node] : state.groups[it.group].members)
        .every((i) => state.picks.has(i)));
      g.classList.toggle("selected", k === chosen);
    }
    // q/k edges are faint until their head (or source) is hovered or selected
    view.qkEdges.forEach((e, j) => view.qkEls[j].classList.toggle("sel", chosen >= 0 && (e.t === chosen || e.s === chosen)));
  }

  // Nodes whose text holds the query, and every node at a position the query covers in the
  // prompt's text (as a token's own text finds the nodes at its position).
  function searchMatches() {
    const q = state.query.trim().toLowerCase();
    if (!q) return [];
    const at = new Set();
    for (const [a, b] of promptSpans(q)) for (let p = a; p <= b; p++) at.add(p);
    const found = [];
    for (let i = 0; i < N; i++) if (searchText[i].includes(q) || (at.size && atToken(nodes[i]) && at.has(nodes[i].pos))) found.push(i);
    return found.sort(byScore);
  }
  // The query's occurrences in the prompt that span tokens, by their tokens: the results say
  // which tokens make up a word (or a character) the search found
  const SPANS_SHOWN = 3;
  function spanNote(q) {
    const spans = promptSpans(q).filter(([a, b]) => b > a);
    if (!spans.length) return null;
    const tokens = ([a, b]) => meta.promptTokens.slice(a, b + 1).map(quote).join(" ") + ` @${a}–${b}`;
    const more = spans.length > SPANS_SHOWN ? ` and ${spans.length - SPANS_SHOWN} more` : "";
    return el("span", { class: "muted spans" }, `in the prompt across tokens: ${spans.slice(0, SPANS_SHOWN).map(tokens).join("; ")}${more} `);
  }
  // Supernodes are found by their names ("g3", "L0 15 features @11": a summary group's key and
  // name, as its box and the mechanisms panel give them), listed before the nodes.
  function groupMatches() {
    const q = state.query.trim().toLowerCase();
    if (!q) return [];
    // (one the reader named by its summary group's name too)
    const names = (g) => { const known = summaryGroupOf(g.members); return [g.name, ...(known ? [known.supernode] : [])]; };
    return state.groups.map((g, k) => k).filter((k) => names(state.groups[k]).some((x) => x.toLowerCase().includes(q)));
  }
  function markSearch() {
    const found = searchMatches(), groups = groupMatches();
    const itemOfGroup = (k) => view.items.findIndex((it) => it.group === k);
    const hit = new Set([...found.map((i) => view.itemOf[i]), ...groups.map(itemOfGroup)]);
    let boxes = 0;
    for (const [k, g] of view.nodeEls) {
      const on = hit.has(k);
      g.classList.toggle("match", on);
      if (on) boxes++;
    }
    // what was found that is drawn, each node or supernode once, and the boxes they light
    // where those are fewer: counted by boxes alone, 9 heads found inside one supernode read
    // "10 found, 1 drawn" above a list giving 9 of them as drawn (a review)
    const isDrawn = (k) => k >= 0 && view.items[k].drawn && view.nodeEls.has(k);
    const drawnFound = found.filter((i) => isDrawn(view.itemOf[i])).length + groups.filter((k) => isDrawn(itemOfGroup(k))).length;
    const total = found.length + groups.length;
    const inBoxes = boxes < drawnFound ? ` in ${boxes} ${boxes === 1 ? "box" : "boxes"}` : "";
    ui.searchCount.textContent = state.query.trim() ? `${total} found, ${drawnFound} drawn${inBoxes}` : "";
    const groupButtons = groups.map((k) => {
      const it = view.items[itemOfGroup(k)], g = state.groups[k];
      return el("button", { type: "button", class: "result", title: `supernode of ${g.members.length} nodes`,
        onclick: () => select({ group: k }) },
      fitText(`supernode ${g.name}`, 48) + (it && it.drawn ? "" : " (not drawn)"));
    });
    const spans = state.query.trim() ? spanNote(state.query.trim().toLowerCase()) : null;
    ui.results.replaceChildren(...(spans ? [spans] : []), ...groupButtons, ...found.slice(0, 40).map((i) => {
      const drawn = view.itemOf[i] >= 0 && view.items[view.itemOf[i]].drawn;
      return el("button", { type: "button", class: "result", title: nodes[i].id, onclick: () => select({ node: i }) },
        fitText(nodes[i].label, 48) + (drawn ? "" : " (not drawn)"));
    }));
  }

  function updateControls() {
    const most = String(budgetMax()), S = rankedGroups(state.groups);
    ui.budget.max = ui.budgetRange.max = most;
    ui.budgetOf.textContent = "of " + most + (!S ? (innerRanked.length ? " " + INNER_WORDS : " (no heads or features)")
      : `: ${S} ${S === 1 ? "supernode" : "supernodes"} (one each) + ${Number(most) - S} ${INNER_WORDS} outside them`);
    ui.budget.value = String(state.budget);
    ui.budgetRange.value = String(state.budget);
    ui.edgeRange.value = String(edgeToSlider(state.edgeMin));
    // 4 digits, as the slider's steps (the page's own threshold is the weakest edge it draws,
    // 0.3897511... in full); not over what is being typed
    if (!edgeTyped) ui.edgeValue.value = fmt(state.edgeMin, 4);
    const picks = state.picks.size;
    ui.groupButton.textContent = picks ? `Group ${picks} picked` : "Group";
    ui.groupButton.disabled = picks < 2;
    ui.clearPins.disabled = state.pinned.size === 0;
    ui.ungroupAll.disabled = state.groups.length === 0;
    const v = view, nToken = v.edges.filter((e) => e.token).length;
    const parts = [
      drawnCounts(v),
      // every token is a candidate (the selection's rule): its edges count, drawn or not
      `${v.edges.length} of ${v.among} edges among them and every token (|w| ≥ ${fmt(state.edgeMin, 3)}` +
        (nToken ? `, and ${nToken} influential ${nToken === 1 ? "token's" : "tokens'"} strongest under it, dotted` : "") + `), ${v.qkEdges.length} QK edges`,
      `ranked by ${data.view.rankedBy}`,
    ];
    if (state.pinned.size) parts.push(`${state.pinned.size} pinned`);
    if (!meta.positional) parts.push("global graph: units, laid out by stage");
    // where the numbers are read (the static section says it further down)
    if (meta.positional && meta.mode === "sparse") {
      parts.push(SPARSE_NOTE + (meta.modelTop ? `; the model itself puts ${quote(meta.modelTop[0])} first (p=${fmt(meta.modelTop[1], 3)})` : ""));
    }
    ui.statusText.textContent = parts.join(" · ");
    showLeftOut(v);
  }

  // "Drawing 40 of 40 nodes: 14 of 14 heads and features, 26 of 26 tokens": every node the
  // drawing shows (a supernode's members included), split into what the budget ranks (the
  // toolbar's count: supernodes, one each, and the top ones outside them; beyond it pinned
  // nodes, targets and QK sources), tokens and targets, so that the parts add up to the whole.
  function drawnCounts(v) {
    const shownNodes = new Set();
    let supernodes = 0, inSupernodes = 0, innerGrouped = 0, ranked = 0; // ranked: in the budget
    for (const it of v.items) {
      if (!it.drawn) continue;
      if (it.node !== undefined) shownNodes.add(it.node);
      else {
        supernodes++; inSupernodes += it.members.length; it.members.forEach((i) => shownNodes.add(i));
        innerGrouped += it.members.filter((i) => INNER.has(nodes[i].kind)).length;
        if (ranksInBudget(it.members)) ranked++;
      }
    }
    const count = (f) => [[...shownNodes].filter((i) => f(nodes[i])).length, nodes.filter(f).length];
    const plural = (n, one, many) => (n === 1 ? one : many);
    const [inner, innerAll] = count((n) => INNER.has(n.kind));
    const [tokens, tokensAll] = count((n) => n.kind === "embedding");
    const [logits, logitsAll] = count((n) => n.kind === "logit");
    const top = v.fromBudget, more = inner - innerGrouped - top;
    const parts = [];
    if (innerAll) {
      const why = `${more} more: pinned, traced from, or QK sources`;
      parts.push(`${inner} of ${innerAll} ${INNER_WORDS}` + (ranked
        ? ` (${state.budget < ranked ? `past the budget's ${state.budget}, as supernodes are always drawn` : `the budget's ${state.budget}`}: ` +
          `${ranked} ${plural(ranked, "supernode", "supernodes")} holding ${innerGrouped}, one box each, and the top ${top} outside them` +
          (more > 0 ? `; ${why})` : ")")
        : more > 0 ? ` (the top ${top} and ${why})` : ""));
    }
    if (tokensAll) parts.push(`${tokens} of ${tokensAll} ${plural(tokensAll, "token", "tokens")}`);
    if (logitsAll) parts.push(`${logits} of ${logitsAll} ${plural(logitsAll, "logit", "logits")}`);
    const grouped = supernodes ? ` (${inSupernodes} of them in ${supernodes} ${plural(supernodes, "supernode", "supernodes")})` : "";
    return `Drawing ${shownNodes.size} of ${N} nodes${grouped}: ` + parts.join(", ");
  }

  // What the drawing leaves out and why, behind the status line's button: heads, features and
  // errors past the budget (by rank), and tokens no drawn edge leaves (their strongest edge to
  // what is drawn, under the edge threshold, or none); each names its node (a click shows its
  // panel) with a button that draws it: a pin, or for a token the threshold that draws its
  // strongest edge. The status line's counts alone did not say which (a review).
  const LEFT_OUT_SHOWN = 30; // per reason, most influential first; the node table has them all
  function leftOutNodes(v) {
    const drawnSet = drawnNodes(v), budget = [], tokens = [];
    for (let i = 0; i < N; i++) {
      if (drawnSet.has(i)) continue;
      if (INNER.has(nodes[i].kind)) budget.push(i);
      else if (nodes[i].kind === "embedding") tokens.push([i, strongestToDrawn(v, i)]);
    }
    budget.sort(byScore);
    tokens.sort((a, b) => byScore(a[0], b[0]));
    return { budget, tokens };
  }
  // A token's strongest edge to what is drawn, as the drawing sums it: its edges into each
  // drawn item added up (a supernode's members' together), the largest |sum| as [item, weight],
  // or null. Its strongest edge to one member was named, and the threshold it set drew nothing
  // where the edges into the member's supernode summed smaller (a review).
  // The sums are the view's own (computeView's), not added again here: added in another
  // order, a supernode's sum differed in its last bit and the threshold set missed it.
  function strongestToDrawn(v, i) {
    const own = v.itemOf[i];
    let best = null;
    for (const e of outE[i]) {
      const b = v.itemOf[tgt[e]];
      if (b < 0 || b === own || !v.items[b].drawn) continue;
      const w = v.sums.get(own * v.M + b) || 0;
      if (w !== 0 && (!best || Math.abs(w) > Math.abs(best[1]))) best = [b, w];
    }
    return best;
  }
  // A token with no drawn edge may be a drawn head's q/k node whose term is under the share
  // of the head's score a q/k edge is drawn at (topQK): [head, side, value, score] or null.
  // A global graph's token held for its QK pair was said to have "no edge to a drawn node",
  // and lowering the edge threshold to 0 did not draw it (a review).
  function heldBackQK(v, i) {
    const present = new Uint8Array(N);
    for (let j = 0; j < N; j++) present[j] = v.itemOf[j] >= 0 ? 1 : 0;
    for (let h = 0; h < N; h++) {
      const it = v.itemOf[h] >= 0 ? v.items[v.itemOf[h]] : null;
      if (!it || !it.drawn || !nodes[h].qk) continue;
      for (const rec of nodes[h].qk.slice(0, 1)) {
        if (meta.positional && rec.key !== nodes[h].attends) continue;
        for (const side of ["q", "k"]) {
          const top = topQK(rec, side, present, true)[0];
          if (top && top[0] === i && !topQK(rec, side, present).length) return [h, side, top[1], rec.score || 0];
        }
      }
    }
    return null;
  }
  function leftOutReason(v, i, best) {
    if (best !== null) return ` · its strongest edge to what is drawn, to ${itemName(v.items[best[0]])}, ${signed(best[1])} `;
    const held = heldBackQK(v, i);
    if (held === null) return " · no edge to a drawn node";
    const [h, side, value, lift] = held;
    return ` · no value edge to a drawn node; its ${side} edge to ${nodes[h].lines.join(" ")}, ${signed(value)} of ` +
      `the head's ${signed(lift)}, is under the ${Math.round(100 * (data.view.qkMinShare || 0))}% of it a q/k edge is drawn at`;
  }
  const itemName = (it) => (it.node !== undefined ? nodes[it.node].lines[0] : it.name);
  function showLeftOut(v) {
    const { budget, tokens } = leftOutNodes(v), n = budget.length + tokens.length;
    ui.leftOutButton.hidden = n === 0;
    ui.leftOutButton.textContent = (ui.leftOut.hidden ? "▸ " : "▾ ") + `which ${n} ${n === 1 ? "is" : "are"} left out, and why`;
    if (ui.leftOut.hidden || !n) { ui.leftOut.replaceChildren(); return; }
    const rank = new Map(innerRanked.map((i, r) => [i, r + 1]));
    const what = (i) => (score[i] > -Infinity ? `${data.view.rankedBy} ${fmt(score[i], 3)}` : "");
    const draw = (label, title, onclick) => el("button", { type: "button", class: "draw", title, onclick }, label);
    const section = (heading, list, row) => list.length ? [el("div", { class: "muted" }, heading),
      el("ul", {}, ...list.slice(0, LEFT_OUT_SHOWN).map(row)),
      list.length > LEFT_OUT_SHOWN ? el("div", { class: "muted" }, `and ${list.length - LEFT_OUT_SHOWN} more (greyed in the node table below)`) : null] : [];
    ui.leftOut.replaceChildren(...[
      ...section(`${budget.length} ${INNER_WORDS} past the budget of ${state.budget} (raise it, or pin one):`, budget,
        (i) => el("li", {}, noderef(nodes[i].id), ` #${rank.get(i)} by ${what(i)} `,
          draw("pin", "draw it whatever the budget", () => togglePin(i)))),
      ...section(`${tokens.length} ${tokens.length === 1 ? "token" : "tokens"} no drawn edge leaves (edges |w| ≥ ${fmt(state.edgeMin, 3)}):`, tokens,
        ([i, best]) => el("li", {}, noderef(nodes[i].id), (score[i] > -Infinity ? ` ${what(i)}` : "") + leftOutReason(v, i, best),
        best === null ? null : draw(`edges ≥ ${fmt(Math.abs(best[1]), 3)}`, "lower the edge threshold to draw this edge (and every one as strong)",
          () => { state.edgeMin = Math.abs(best[1]); update(); })))].filter((x) => x));
  }
  function drawnNodes(v) {
    const drawn = new Set();
    v.items.forEach((it) => {
      if (!it.drawn) return;
      if (it.node !== undefined) drawn.add(it.node); else it.members.forEach((i) => drawn.add(i));
    });
    return drawn;
  }

  // The node table below the viewer: grey out the rows of nodes the drawing leaves out. The
  // script runs before the table is parsed (so the picture comes first): rows are found once
  // the document is complete.
  const tableRows = new Map();
  function findRows() {
    for (const n of nodes) {
      const td = document.getElementById(NODE_ANCHOR + n.id);
      if (td) tableRows.set(n.id, td.parentElement);
    }
    if (view) updateTable();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", findRows);
  else findRows();
  function updateTable() {
    if (!tableRows.size) return;
    const drawn = drawnNodes(view);
    nodes.forEach((n, i) => { const r = tableRows.get(n.id); if (r) r.classList.toggle("undrawn", !drawn.has(i)); });
  }

  // A one-line message under the status line (what a key press could not do); the next redraw
  // or click clears it.
  function say(text) { ui.message.textContent = shown(text); }
  function update() {
    const focus = focusOf();
    say("");
    setHover(null);
    hovered = null;
    render();
    writeState();
    showPanel();
    refocus(focus);
  }
  // A button of the panel, the left-out list or the toolbar that an edit redraws away or
  // disables hands the keyboard's focus on instead of dropping it on the page (a review: Pin,
  // Pick, Ungroup, Group, Clear pins and a left-out pin each sent the next Tab to the top):
  // the panel's button of the same kind (Pin is then Unpin), the left-out list's button at the
  // same place, else the drawn item selected, else the drawing's first box. Only a focus the
  // keyboard brought (:focus-visible): a mouse's would light a box's paths (focus is hover).
  function focusOf() {
    const a = document.activeElement;
    if (!a || a === document.body || !root.contains(a) || !a.matches(":focus-visible")) return null;
    const drawButtons = [...ui.leftOut.querySelectorAll("button.draw")];
    return { el: a, inPanel: ui.panel.contains(a), cls: a.classList[0] || "", at: drawButtons.indexOf(a) };
  }
  function refocus(f) {
    if (!f || (f.el.isConnected && !f.el.disabled && document.activeElement === f.el)) return;
    let next = f.inPanel && f.cls ? ui.panel.querySelector("button." + f.cls) : null;
    if (!next && f.at >= 0) {
      const drawButtons = ui.leftOut.querySelectorAll("button.draw");
      next = drawButtons[Math.min(f.at, drawButtons.length - 1)] || null;
    }
    if (!next && view) next = view.nodeEls.get(selectedItem()) || ui.svg.querySelector("g.node");
    if (next) next.focus();
  }

  // ---------------------------------------------------------------------- pins and groups
  function togglePick(it) {
    // a supernode's members are picked (or, all picked, unpicked) together: grouped with
    // others they leave it (a reviewer's ctrl-click on one did nothing and said nothing)
    const members = it.node !== undefined ? [it.node] : state.groups[it.group].members;
    const all = members.every((i) => state.picks.has(i));
    for (const i of members) if (all) state.picks.delete(i); else state.picks.add(i);
    markClasses();
    updateControls();
  }
  // A budget at its most (every box drawn) stays there when grouping changes the most: it was
  // clamped to the fewer boxes of a new supernode, and ungrouping it then left nodes out (a
  // review: every node drawn, two grouped and ungrouped, one gone, "6 of 7").
  function regroup(change) {
    const all = state.budget >= budgetMax();
    change();
    if (all) state.budget = budgetMax();
  }
  // A new supernode of ``members`` (two or more): they leave the groups they were in (a group
  // left with fewer than two dissolves), and its name is unique (supernodes are keyed by name:
  // a taken one, or none, gets the first free number).
  function addGroup(members, wanted) {
    regroup(() => addGroupTo(members, wanted));
    update();
  }
  function addGroupTo(members, wanted) {
    const picked = new Set(members);
    for (const g of state.groups) g.members = g.members.filter((i) => !picked.has(i));
    state.groups = state.groups.filter((g) => g.members.length >= 2);
    const taken = new Set(state.groups.map((g) => g.name));
    const base = wanted.trim() || "group";
    let name = wanted.trim() && !taken.has(base) ? base : null;
    for (let k = 1; name === null; k++) if (!taken.has(base + " " + k)) name = base + " " + k;
    state.groups.push({ name, members });
    state.clicked = { group: state.groups.length - 1 };
  }
  function makeGroup() {
    if (state.picks.size < 2) return;
    const members = [...state.picks];
    state.picks.clear();
    const wanted = ui.groupName.value;
    ui.groupName.value = "";
    addGroup(members, wanted);
  }
  function ungroup(k) {
    regroup(() => state.groups.splice(k, 1));
    state.clicked = null;
    update();
  }
  function togglePin(i) {
    if (state.pinned.has(i)) state.pinned.delete(i); else state.pinned.add(i);
    update();
  }
  function select(target) {
    say("");
    state.clicked = target;
    markClasses();
    writeState();
    showPanel();
    // a node chosen from the panel, a search or the table may be off the canvas: the canvas
    // brings it in (never the window: a table link's row stays where it was scrolled)
    const g = view && view.nodeEls.get(selectedItem());
    if (g) showInCanvas(g);
  }
  function showInCanvas(g) {
    const c = ui.canvas, r = g.getBoundingClientRect(), box = c.getBoundingClientRect(), pad = 16;
    if (r.left < box.left) c.scrollLeft -= box.left - r.left + pad;
    else if (r.right > box.left + c.clientWidth) c.scrollLeft += r.right - box.left - c.clientWidth + pad;
    if (r.top < box.top) c.scrollTop -= box.top - r.top + pad;
    else if (r.bottom > box.top + c.clientHeight) c.scrollTop += r.bottom - box.top - c.clientHeight + pad;
  }
  // Keyboard edits redraw the picture: the focus goes back to the item it was on (a reviewer's
  // second `p` fell on the page, the focus lost with the old drawing).
  function keepingFocus(change) {
    const a = document.activeElement, id = a && a.dataset ? (a.dataset.id ?? null) : null;
    const group = a && a.dataset ? (a.dataset.group ?? null) : null;
    change();
    if (id === null && group === null) return;
    for (const g of view.nodeEls.values()) {
      if ((id !== null && g.dataset.id === id) || (id === null && g.dataset.group === group)) { g.focus(); return; }
    }
  }

  // ------------------------------------------------------------------------------- the panel
  // A node named in the panel, by its label (the id is in the tooltip): a link when the graph
  // holds it, else the label data.refs makes from its fields (reports/viewer.py: pruning
  // dropped it, or it is a unit without a position). `how`: "short" for the drawn text (the
  // members of a group the line already describes); "absent" for a QK reason's side, where a
  // unit (no position) is one absent at the position, acting through its mean alone.
  const REF_CHARS = 64;
  function noderef(id, how) {
    if (id == null || id === "bias") return el("span", { class: "muted" }, "bias");
    const i = byId.get(id);
    if (i !== undefined) {
      const n = nodes[i], text = how === "short" ? n.lines[0] : n.label;
      return el("button", { type: "button", class: "noderef", title: shown(n.label) + " (id " + n.id + ")",
        onclick: () => select({ node: i }) }, fitText(text, REF_CHARS));
    }
    const r = (data.refs || {})[id];
    let text = id;
    if (r) text = how === "short" ? r.short : how === "absent" && r.pos == null && meta.positional ? "minus the mean's " + r.label + " (not at this position)" : r.label; // as reports.mechanisms.ref_text
    const what = !(r && r.pos == null && meta.positional) ? "not in this pruned graph"
      : how === "absent" ? "a unit absent at this position: it acts through its mean alone" : "a unit (no position)";
    return el("span", { class: "noderef absent", title: (r ? shown(r.label) + ": " : "") + what + " (id " + id + ")" }, fitText(text, REF_CHARS));
  }
  function facts(rows) {
    const dl = el("dl", { class: "facts" });
    for (const [k, v] of rows) if (v != null && v !== "") dl.append(el("dt", {}, k), el("dd", {}, String(v)));
    return dl;
  }
  function drawnItemOf(i) {
    const k = view.itemOf[i];
    return k >= 0 && view.items[k].drawn ? view.items[k] : null;
  }
  function showPanel() {
    const c = state.clicked;
    if (c && c.group !== undefined && state.groups[c.group]) return showGroup(c.group);
    if (c && c.node !== undefined) return showNode(c.node);
    ui.panel.replaceChildren(
      el("h3", {}, "Click a node"),
      el("p", { class: "muted" }, "Its label, numbers, strongest incoming and outgoing edges, QK records for Lorsa heads and its unit's dashboard appear here."),
      ...mechanismsBlock(),
      qParamsBlock());
  }
  // The mechanism summary (circuits.mechanisms): targets' exact parts, top paths by group,
  // each group's flow, QK reason and ablation checks; a group with two or more members in
  // this graph can be drawn as a supernode.
  function mechanismsBlock() {
    const m = data.mechanisms;
    if (!m) return [];
    const groups = new Map(m.groups.map((g) => [g.key, g]));
    const targetText = new Map(m.targets.map((t) => [t.node, targetWords(t)]));
    // With several targets, each flow and check says which target it is for.
    const several = m.targets.length > 1;
    const named = (node) => targetText.get(node) ?? node;
    // A group key never stands alone: it comes with the group's name, as the printed summary
    // writes it ("g0 L0 19 heads @7 -> ' Wednesday'@6"), in one chip (a path's steps are told
    // apart by the chips, not by the arrows some names hold); a click shows its entry below.
    const entries = new Map();
    const groupRef = (k) => {
      const g = groups.get(k);
      return el("button", { type: "button", class: "group-ref", title: g ? `group ${k}: ${shown(g.title || g.name)} (its entry below, or its node)` : `group ${k}`,
        onclick: () => {
          const li = entries.get(k);
          if (!li) {
            // a group with no entry of its own (a path's root: a token, a position vector)
            // shows its first member drawn in this graph (a review: its chip did nothing)
            const i = ((g && g.members) || []).map((id) => byId.get(id)).find((x) => x !== undefined);
            if (i !== undefined) select({ node: i });
            return;
          }
          li.scrollIntoView({ block: "nearest" });
          li.classList.add("flash");
          setTimeout(() => li.classList.remove("flash"), 1200);
        } }, el("b", {}, k), g ? " " + g.name : "");
    };
    const flowOf = (k, node) => signed(((groups.get(k) || {}).flow || {})[node]);
    // a QK sources block: its heading, then a block per side (qk_sources_block)
    const block = (lines) => blockEl(lines, "qk-sources");
    const out = [el("h4", {}, "Mechanisms"), legendEl()];
    for (const t of m.targets) {
      const what = named(t.node);
      const at = (t.byPosition || []).map((x) => `${quote(x.token)}@${x.pos} ${signed(x.flow)}`);
      if (t.morePositions) at.push(`${t.morePositions} more`);
      const byPos = at.length ? ` (${at.join(", ")})` : "";
      out.push(el("p", {}, `${what} = ${fmt(t.value)} ${t.probabilityText || ""}: tokens ${signed(t.tokens)}${byPos}, constants ${signed(t.constants)}, errors ${signed(t.errors)}` +
        (t.rival ? " · " + t.rival : "")));
      if (t.reads) out.push(el("p", { class: "reads" }, t.reads),
        ...(t.ownAttention ? [blockEl(t.ownAttention, "own-attention")] : []),
        ...(t.qk || []).flatMap(reasonLines),
        ...(t.ownQkSources ? [block(t.ownQkSources)] : []));
      if (t.own) out.push(el("p", {}, t.own));
      if (t.predicting) {
        out.push(el("p", { class: "predicting" }, `${t.predictingLabel}: `, groupRef(t.predicting), `, flow ${flowOf(t.predicting, t.node)}` + (t.spread ? ` (${t.spread})` : "")));
        if (t.flagged) out.push(el("p", { class: "neg flagged" }, t.flagged));
        if (t.stronger) out.push(el("p", { class: "stronger" }, t.stronger));
        if (t.why) out.push(blockEl(t.why, "why"));
        if (t.qkSources) out.push(block(t.qkSources));
      }
      if (t.moved) out.push(el("p", { class: "muted" }, t.moved));
      if (t.next && t.next.length) {
        out.push(el("p", { class: "next-groups" }, "next head groups there, by flow: ",
          ...t.next.flatMap((k, j) => [j ? "; " : "", groupRef(k), " " + flowOf(k, t.node)])));
      }
      const paths = m.paths.filter((p) => p.target === t.node);
      if (paths.length) {
        out.push(el("div", { class: "muted" }, "top paths, token to target:"), el("ul", { class: "paths" }, ...paths.map((p) =>
          el("li", {}, el("span", { class: "flow" }, signed(p.flow)), " ",
            ...p.groups.map((k, j) => (j ? el("span", { class: "step" }, el("span", { class: "arrow" }, "→ "), groupRef(k)) : groupRef(k)))))));
      }
    }
    const inner = m.groups.filter((g) => g.kind === "lorsa" || g.kind === "transcoder");
    out.push(el("ul", { class: "mech-groups" }, ...inner.map((g) => {
      // titled as the printout's paths title it (a feature group without a concept: its
      // members' concept, or what its flow reads and promotes), its members' concepts under it
      const li = el("li", {}, el("b", {}, g.key), " " + (g.title || g.name) + " · flow " + Object.entries(g.flow).map(([node, v]) => (several ? named(node) + " " : "") + signed(v)).join(", "));
      if (g.memberConcepts) li.append(el("div", { class: "muted member-concepts" }, g.memberConcepts));
      for (const [node, text] of Object.entries(g.brings || {})) {
        li.append(el("div", { class: "muted", title: legendTip("groups") }, (several ? named(node) + ": " : "") + text));
      }
      if (g.writesQk) li.append(el("div", { class: "writes-qk" }, g.writesQk));
      for (const r of g.qk) li.append(...reasonLines(r, true));
      li.append(...checkLines(g, several ? named : null));
      const members = g.members.map((id) => byId.get(id)).filter((i) => i !== undefined);
      if (members.length >= 2) {
        li.append(el("button", { type: "button", class: "mech-group",
          onclick: () => addGroup(members, g.supernode) }, "Draw as a supernode"));
      }
      entries.set(g.key, li);
      return li;
    })));
    return out;
  }
  // A summary target in words: a logit's token (less its negative's), a head's or feature's name.
  function targetWords(t) {
    return t.kind !== "logit" ? t.token : quote(t.token) + (t.negative != null ? " − " + quote(t.negative) : "");
  }
  // A summary group's ablation checks, one line each (a flagged one red; `named`, where there
  // are several targets, says which each is for), then its attention checks.
  function checkLines(g, named) {
    const out = g.checks.map((c) => el("div", { class: c[4] ? "neg" : "muted", title: legendTip("checks") },
      `ablate${named ? " " + named(c[0]) : ""}: predicted ${signed(c[1])}, frozen ${signed(c[2])}${c[5]}, free ${signed(c[3])}${c[6]} [${c[7]}]`));
    if (g.attention) out.push(el("div", { class: "muted attention-checks" }, g.attention));
    return out;
  }
  // A block (reports.mechanisms.block_lines): its heading, then its lines as a list, a nested
  // block a list item with its own list.
  function blockEl(lines, cls) {
    return el("div", { class: cls }, el("p", {}, lines[0]), ...(lines.length > 1 ? [blockList(lines.slice(1))] : []));
  }
  function blockList(items) {
    return el("ul", {}, ...items.map((x) => Array.isArray(x)
      ? el("li", {}, x[0], ...(x.length > 1 ? [blockList(x.slice(1))] : [])) : el("li", {}, x)));
  }
  // The summary's words defined (reports.mechanisms.legend_blocks, the printout's legend: one
  // source), folded away under the Mechanisms heading and wherever the panel shows a QK
  // reason or a check; a reason's and a check's line say their block in a tooltip too.
  function legendEl() {
    const m = data.mechanisms;
    if (!m || !m.legend.length) return "";
    return el("details", { class: "legend" }, el("summary", {}, "Legend: what the summary's words mean"),
      ...m.legend.map((b) => blockEl(b.lines, "legend-" + b.name)));
  }
  function legendTip(name) {
    const b = data.mechanisms && data.mechanisms.legend.find((x) => x.name === name);
    const flat = (lines) => lines.flatMap((x) => Array.isArray(x) ? flat(x) : [x]);
    return b ? flat(b.lines).join("\n") + "\n(the Legend, folded under the Mechanisms heading and here)" : "";
  }
  // A summary's QK reason (a group's or a head target's own): the score's parts, tokens first
  // (which token at the query meets which at the key), then the units and each side's sources.
  // `listed`: in the summary's list of groups, where a reason given under an earlier group
  // points there (r.said: reports.mechanisms.reason_repeats), as the printout does.
  function reasonLines(r, listed) {
    const said = (listed && r.said) || {};
    const head = `QK ${r.qkHead} → ${quote(r.keyToken)}@${r.key}`;
    const out = [el("div", { class: "muted", title: legendTip("qk") }, said.reason ? `${head}: as under ${said.reason} above`
      : `${head}: score ${signed(r.score)} = always-on ${signed(r.alwaysOn)} + specific ${signed(r.specific)}`)];
    const part = (name, lines, words) => {
      if (!lines || said[name] === (said.reason || "")) return;
      out.push(said[name] ? el("div", { class: "muted" }, `${words}: as under ${said[name]} above`) : blockEl(lines, "muted"));
    };
    part("roots", r.roots, "specific by roots");
    part("checks", r.tokenChecks, "each named token made the mean token");
    if (said.reason) return out;
    if (r.units) out.push(el("div", { class: "muted" }, r.units));
    if (r.pairs.length) out.push(el("ul", {}, ...r.pairs.map((p) => el("li", {}, `${p[0]} × ${p[1]}: ${signed(p[2])}`))));
    for (const line of r.sources || []) out.push(el("div", { class: "muted" }, line));
    return out;
  }
  function showNode(i) {
    const n = nodes[i], parts = [];
    parts.push(el("h3", {}, n.label), el("div", { class: "id" }, n.id + " · unit " + n.unit));
    const item = drawnItemOf(i);
    const buttons = el("div", { class: "buttons" },
      el("button", { type: "button", class: "pin", onclick: () => togglePin(i) }, state.pinned.has(i) ? "Unpin" : "Pin"),
      el("button", { type: "button", class: "pick", onclick: () => { const f = focusOf(); togglePick({ node: i }); showPanel(); refocus(f); } },
        state.picks.has(i) ? "Unpick" : "Pick for a supernode"), closeButton());
    parts.push(buttons);
    if (!item) parts.push(el("p", { class: "note" }, "Not drawn at this budget and edge threshold: pin it to draw it."));
    else if (item.group !== undefined) parts.push(el("p", { class: "note" }, "Drawn inside supernode " + quote(item.name) + "."));
    const token = meta.positional && n.pos >= 0 && n.pos < meta.promptTokens.length ? " " + quote(meta.promptTokens[n.pos]) : "";
    parts.push(facts([
      ["kind", kindName(n)],
      ["stage", meta.stageNames[n.stage]],
      ["layer", n.kind === "embedding" || n.kind === "logit" ? "" : n.layer],
      ["index", n.index >= 0 && n.kind !== "embedding" ? n.index : ""],
      ["position", meta.positional ? n.pos + token : "(global: a unit)"],
      // a token's, error's or constant's is 1 by the graph's convention (its write vector
      // is the vector itself): not shown, as graph.json writes none (a review)
      ["activation", data.view.noActivation.includes(n.kind) ? "" : fmt(n.activation)],
      ["influence", n.influence == null ? "" : fmt(n.influence)],
      [data.view.rankedBy, n.score == null ? "" : fmt(n.score)],
      ["pre-activation", n.value == null ? "" : fmt(n.value)],
      ["constant term", n.bias == null ? "" : fmt(n.bias)],
      ["firings in sample", n.occurrences == null ? "" : fmt(n.occurrences)],
      ["probability", n.logit && n.logit.negative == null ? fmt(n.logit.probability) : ""],
    ]));
    if (n.logit) {
      parts.push(el("p", {}, "Target: logit of " + quote(n.logit.token) + (n.logit.negative != null ? " minus " + quote(n.logit.negative) : "")));
    }
    if (n.attends != null) {
      const keyTok = meta.positional ? " " + quote(meta.promptTokens[n.attends] || "") : "";
      // the share of its activation that key brings: a head spreading what it writes over
      // many keys reads its largest term all the same (a reviewer's flat pattern: 12%)
      const share = n.key_share != null ? `; it brings ${Math.floor(100 * n.key_share + 1e-4)}% of its activation` : "";
      parts.push(el("p", { class: "attends" }, `Reads key ${n.attends}${keyTok}: its activation comes from there most (attention ${fmt(n.attention, 3)}${share})`));
    }
    if (n.promotes && n.promotes.length) {
      parts.push(el("p", { class: "promotes" }, "Promotes " + n.promotes.map(quote).join(", ")));
    }
    const qkTitle = meta.positional ? "QK: why it attends the key it reads" : "QK: what its group attends with";
    if (n.qk) {
      const reasons = summaryReasons(n);
      parts.push(el("h4", {}, qkTitle), ...reasons, ...(reasons.length ? [legendEl()] : []), ...n.qk.map((rec) => qkBlock(rec, n)));
    }
    // by drawn item, as a supernode's panel lists them: another supernode's members together
    parts.push(el("h4", {}, "Top incoming edges (by node or supernode)"), edgeTable(edgesByItem([i], -1, inE, src), -1));
    parts.push(el("h4", {}, "Top outgoing edges (by node or supernode)"), edgeTable(edgesByItem([i], -1, outE, tgt), -1));
    // heads and features have dashboards; a token, an error, a constant or a logit is no unit
    // (a review read "No dashboard for unit 9_273-363" under a logit difference)
    if (n.kind === "lorsa" || n.kind === "transcoder") parts.push(el("h4", {}, "Dashboard"), dashboard(n));
    parts.push(qParamsBlock());
    ui.panel.replaceChildren(...parts);
    ui.panel.scrollTop = 0;
  }
  // Back to the panel's overview (the mechanism summary, the qParams): nothing else unselects,
  // so a review found the summary out of reach after the first click but by editing the URL.
  // From the keyboard, the focus goes to the box that was selected.
  function closeButton() {
    return el("button", { type: "button", class: "close", title: "unselect: back to the overview (and the mechanism summary)",
      onclick: () => {
        const f = focusOf(), g = view && view.nodeEls.get(selectedItem());
        select(null);
        if (f && g) g.focus();
      } }, "Close");
  }
  // The mechanism summary's QK reasons where head n is a target or a member of a group: by
  // tokens and positions, with the token checks, which the head's own record below does not
  // hold. A group gives them for its strongest QK heads; the heading says when n's QK head is
  // another (the group's heads attend the same key from the same query).
  function summaryReasons(n) {
    const m = data.mechanisms;
    if (!m || !n.qk) return [];
    const qkHead = n.qk[0].qkHead, out = [];
    const block = (heading, rs) => el("div", { class: "summary-reason" }, el("div", {}, heading), ...rs.flatMap(reasonLines));
    for (const t of m.targets) {
      if (t.node === n.id && t.qk && t.qk.length) out.push(block("In the mechanism summary, as a target:", t.qk));
    }
    for (const g of m.groups) {
      if (!g.members.includes(n.id) || !g.qk.length) continue;
      const other = g.qk.every((r) => r.qkHead !== qkHead) ? ` (for its QK ${g.qk.map((r) => r.qkHead).join(", ")}; this head's QK ${qkHead} is below)` : "";
      out.push(block(`In the mechanism summary, group ${g.key} ${g.name}${other}:`, g.qk));
    }
    return out;
  }
  // A record's sources count each feature alone (heads are grouped by the key they read) and
  // keep each side's largest few: many small features can bring more together than a listed
  // line and go unlisted, where the mechanism summary's side lines sum them by layer and
  // position (a review: "L0 32 features @15 +12.5" in the summary beside a head's list of a
  // token and two head groups). The panel says so, and where the sum is.
  function featuresNote(above) {
    const where = !data.mechanisms ? "the mechanism summary (python -m circuits.trace --mechanisms) sums them by layer and position"
      : above ? "the mechanism summary's “query side from” and “key side from” lines above sum them by layer and position"
        : "the mechanism summary sums them by layer and position for its groups' heads (their “query side from” and “key side from” lines: the Mechanisms section below, and mechanisms.json)";
    return el("div", { class: "muted sources-note" }, "Features are not summed here as heads are (each counts alone), and each side keeps only its largest sources: " +
      "many small features can together bring more than a listed line and go unlisted; " + where + ".");
  }
  // Whether the panel shows the mechanism summary's side lines for this record's QK head
  // (summaryReasons, above the record).
  function summaryHasSides(rec, n) {
    const m = data.mechanisms;
    if (!m) return false;
    const has = (rs) => (rs || []).some((r) => r.qkHead === rec.qkHead && r.sources && r.sources.length);
    return m.targets.some((t) => t.node === n.id && has(t.qk)) || m.groups.some((g) => g.members.includes(n.id) && has(g.qk));
  }
  // A QK source group (circuits.qk.qk_sources) in words: its heads and the key they read, its
  // features or error node, or the side's own token, and where.
  function sourceWhat(x) {
    if (x.kind === "embedding") return `its own token ${quote(meta.promptTokens[x.pos] || "")}@${x.pos}`;
    return x.kind === "lorsa"
      ? `L${x.layer} ${x.members.length === 1 ? "head" : x.members.length + " heads"} @${x.pos} reading @${x.attends}${meta.promptTokens[x.attends] != null ? " " + quote(meta.promptTokens[x.attends]) : ""}`
      : `L${x.layer} ${x.kind === "error" ? "error" : "feature"} @${x.pos}`;
  }
  // A supernode's heads' QK sources: each member head's groups (from its record at the key it
  // reads, the first) summed over the members' QK heads by group (side, kind, layer, position,
  // key read), members united; largest |sum| first. Heads sharing a QK head at one query and
  // key share its record, counted once: summed per OV head, a 20-head group's shared score
  // read +230 beside the summary's per-QK-head lines (a review). Each value is what the group
  // adds to that QK head's score, so the sum is what it adds to the QK heads' scores together.
  function summedSources(members) {
    const by = new Map(), seen = new Set();
    let heads = 0;
    for (const i of members) {
      const rec = (nodes[i].qk || [])[0];
      if (!rec || rec.key !== nodes[i].attends || !rec.sources || !rec.sources.length) continue;
      heads += 1;
      const qk = [rec.layer, rec.qkHead, nodes[i].pos, rec.key].join(",");
      if (seen.has(qk)) continue;
      seen.add(qk);
      for (const x of rec.sources) {
        const key = [x.side, x.kind, x.layer, x.pos, x.attends].join(",");
        const e = by.get(key) || { side: x.side, kind: x.kind, layer: x.layer, pos: x.pos, attends: x.attends, value: 0, members: [], heads: 0 };
        e.value += x.value;
        e.heads += 1;
        for (const m of x.members) if (!e.members.includes(m)) e.members.push(m);
        by.set(key, e);
      }
    }
    const list = [...by.values()].sort((a, b) => Math.abs(b.value) - Math.abs(a.value));
    return { heads, qkHeads: seen.size, list };
  }
  function qkBlock(rec, n) {
    if (!meta.positional) return globalQkBlock(rec);
    const keyTok = " " + quote(rec.keyToken);
    const block = el("div", { class: "qk" },
      el("div", {}, `key ${rec.key}${keyTok} · attention ${fmt(rec.attention, 3)} · score ${signed(rec.score)} (rest ${signed(rec.rest)})`));
    if (rec.sources && rec.sources.length) {
      // Where each side comes from through the graph, heads grouped by the key they read (the
      // drawn QK edges come from the first of each side).
      const what = sourceWhat;
      for (const side of ["q", "k"]) {
        const list = rec.sources.filter((x) => x.side === side);
        if (!list.length) continue;
        block.append(el("div", { class: "muted" }, `${side === "q" ? "query" : "key"} side from, through the graph:`),
          el("ul", {}, ...list.map((x) => el("li", {}, `${what(x)} `, el("span", { class: x.value > 0 ? "pos" : "neg" }, signed(x.value)), ": ",
            ...x.members.slice(0, 3).flatMap((id, j) => [j ? " " : "", noderef(id, "short")]), x.members.length > 3 ? ` and ${x.members.length - 3} more` : ""))));
      }
      block.append(featuresNote(summaryHasSides(rec, n)));
    }
    if (rec.pairs.length) {
      block.append(el("div", { class: "muted" }, "largest terms of the whole score (its always-on parts too), query-side × key-side:"),
        el("ul", {}, ...rec.pairs.slice(0, QK_SHOWN).map((p) => el("li", {}, noderef(p[0]), " × ", noderef(p[1]), ": ",
          el("span", { class: p[2] > 0 ? "pos" : "neg" }, signed(p[2]))))));
    }
    if (rec.reason) {
      const r = rec.reason;
      block.append(el("div", {}, `always-on: mean q × mean k ${signed(r.meanQueryMeanKey)}, this q × mean k ${signed(r.queryVsMeanKey)}, mean q × this k ${signed(r.meanQueryVsKey)}; specific ${signed(r.specific)}`));
      if (r.units) block.append(el("div", { class: "muted" }, r.units));
      if (r.pairs.length) block.append(el("ul", {}, ...r.pairs.map((p) => el("li", {}, noderef(p[0], "absent"), " × ", noderef(p[1], "absent"), ": ",
          el("span", { class: p[2] > 0 ? "pos" : "neg" }, signed(p[2]))))));
    }
    if (rec.contrast != null) {
      block.append(el("div", {}, `vs the mean key: ${signed(rec.contrast)} (key side as units)`),
        el("ul", {}, ...rec.contrastPairs.slice(0, QK_SHOWN).map((p) => el("li", {}, noderef(p[0]), " × ", noderef(p[1]), ": ",
          el("span", { class: p[2] > 0 ? "pos" : "neg" }, signed(p[2]))))));
    }
    return block;
  }
  // A global graph's QK record: no positions; an expected score lift per firing of the group,
  // its largest query-unit x key-unit pairs and each side's strongest units.
  function globalQkBlock(rec) {
    // A QK circuit's pairs come from the weights alone (W_Q W_K^T), not from the corpus.
    const what = meta.qkFromWeights
      ? `from the weights alone (W_Q W_K^T between the units' write vectors, no prompt or corpus) · its ${rec.pairs.length} strongest pairs, sum ${signed(rec.score)}`
      : `expected QK attribution per firing · score lift ${signed(rec.score)} (rest ${signed(rec.rest)})`;
    const block = el("div", { class: "qk" }, el("div", {}, `L${rec.layer} QK ${rec.qkHead} · ${what}`));
    const term = (p) => el("span", { class: p > 0 ? "pos" : "neg" }, signed(p));
    if (rec.pairs.length) {
      block.append(el("div", { class: "muted" }, "largest pairs, query-side unit × key-side unit:"),
        el("ul", {}, ...rec.pairs.slice(0, QK_SHOWN).map((p) => el("li", {}, noderef(p[0]), " × ", noderef(p[1]), ": ", term(p[2])))));
    }
    for (const [name, list] of [["query side", rec.queryMarginals], ["key side", rec.keyMarginals]]) {
      if (!list || !list.length) continue;
      block.append(el("div", { class: "muted" }, name + ":"),
        el("ul", {}, ...list.slice(0, QK_SHOWN).map((m) => el("li", {}, m[0] == null ? "bias" : noderef(m[0]), ": ", term(m[1])))));
    }
    return block;
  }
  function dashboard(n) {
    const d = data.dashboards[n.unit];
    if (!d) {
      const any = Object.keys(data.dashboards).length > 0;
      return el("p", { class: "muted no-dashboard" }, any
        ? "No dashboard for unit " + n.unit + " in this page's data."
        : "No unit dashboards in this page's data: none were given when it was written.");
    }
    const box = el("div", { class: "dashboard" });
    if (d.concept) box.append(el("p", { class: "concept" }, "Concept: " + d.concept.label + (d.concept.f1 != null ? ` (F1 ${fmt(d.concept.f1, 3)})` : "")));
    if (d.concept && (meta.documentConcepts || []).includes(d.concept.label)) box.append(el("p", { class: "at-chance" }, "The kind of document the unit fires in, not what it reads: the mechanism summary neither names nor groups by it"));
    if (d.concept && d.concept.at_chance) box.append(el("p", { class: "at-chance" }, `At chance: a unit firing as often at random would get F1 ${fmt(d.concept.chance, 3)} with this concept, so the label says how often the unit fires, not what it reads`));
    if (d.frequency === 0) box.append(el("p", { class: "never-fired" }, "Never fired on the dashboards' tokens (it does on this prompt), so there are no examples to show"));
    else if (d.frequency != null) box.append(el("p", {}, `Fires on ${fmt(100 * d.frequency, 3)}% of tokens`));
    if (d.histogram) box.append(histogram(d.histogram));
    if (d.logits) {
      const side = (name, rows) => rows && rows.length
        ? el("div", { class: "logits-" + name }, name + ": ", ...rows.map((r, j) => el("span", {}, (j ? ", " : "") + quote(r[0]) + " " + signed(r[1]))))
        : null;
      box.append(el("div", { class: "logits" }, side("promotes", d.logits.promoted), side("suppresses", d.logits.suppressed)));
    }
    if (d.examples && d.examples.length) {
      const groups = new Map();
      for (const ex of d.examples) { if (!groups.has(ex.group)) groups.set(ex.group, []); groups.get(ex.group).push(ex); }
      for (const [g, list] of groups) {
        box.append(el("div", { class: "muted" }, "examples: " + g));
        for (const ex of list) box.append(example(ex));
      }
    }
    return box;
  }
  function example(ex) {
    const keys = new Map((ex.keys || []).map((k) => [k[0], k[1]]));
    const maxAct = ex.acts ? Math.max(1e-12, ...ex.acts.map(Math.abs)) : 0;
    const maxKey = keys.size ? Math.max(1e-12, ...[...keys.values()].map(Math.abs)) : 0;
    const line = el("div", { class: "example" });
    if (ex.activation != null) line.append(el("span", { class: "act" }, fmt(ex.activation, 3)));
    ex.tokens.forEach((token, j) => {
      // a newline as ↵ before its line break: alone, an activating newline was an empty box
      // between two words (read as a space), and a break looks like the panel's wrapping; a
      // tab as ⇥, as the page's token boxes draw it (reports.html.BOX_MARKS)
      const t = token.replace(/\n/g, "\u21b5\n").replace(/\t/g, "\u21e5");
      const span = j === ex.at ? el("mark", { title: "activating token" }, t) : el("span", {}, t);
      if (j !== ex.at && ex.acts && ex.acts[j] > 0) span.style.background = `rgba(253,141,60,${(0.6 * ex.acts[j]) / maxAct})`;
      if (keys.has(j)) {
        span.classList.add("key");
        span.style.borderBottomWidth = `${1 + Math.round((3 * Math.abs(keys.get(j))) / maxKey)}px`;
        span.title = "key: carried " + signed(keys.get(j)) + " of the activation";
      }
      line.append(span);
    });
    return line;
  }
  function histogram(h) {
    const W = 300, H = 44, n = h.counts.length, max = Math.max(1, ...h.counts);
    const svg = svgEl("svg", { class: "hist", width: W, height: H + 12, viewBox: `0 0 ${W} ${H + 12}` });
    h.counts.forEach((c, j) => {
      const bh = (H * c) / max;
      svg.append(svgEl("rect", { x: (j * W) / n, y: H - bh, width: Math.max(1, W / n - 1), height: bh }));
    });
    const lo = svgEl("text", { x: 0, y: H + 11, "font-size": "9" }), hi = svgEl("text", { x: W, y: H + 11, "font-size": "9", "text-anchor": "end" });
    lo.textContent = fmt(h.edges[0], 3);
    hi.textContent = fmt(h.edges[n], 3);
    svg.append(lo, hi);
    return el("div", {}, el("div", { class: "muted" }, "activation histogram (when firing)"), svg);
  }
  // A node's or a supernode's edges summed to each neighbour as the drawing sums them: a node,
  // or another supernode's members together (the panels listed each member of another
  // supernode apart, none of them the drawn edge's number). `members` are the panel's own
  // nodes, `self` its supernode (-1 for a node's panel). Each row keeps its split: by this
  // supernode's members, or, in a node's panel, by the other supernode's.
  function edgesByItem(members, self, lists, end) {
    const own = new Set(members), by = new Map();
    // a node drawn inside a supernode lists the other members apart (no edge of its own box)
    const home = self >= 0 ? self : view.groupOf[members[0]];
    for (const i of members) for (const e of lists[i]) {
      const j = end[e];
      if (own.has(j)) continue;
      const other = view.groupOf[j], grouped = other >= 0 && other !== home, key = grouped ? "g" + other : "n" + j;
      if (!by.has(key)) by.set(key, grouped ? { group: other, w: 0, split: new Map() } : { node: j, w: 0, split: new Map() });
      const row = by.get(key), part = self >= 0 ? i : j;
      row.w += wt[e];
      row.split.set(part, (row.split.get(part) || 0) + wt[e]);
    }
    return [...by.values()].filter((r) => r.w !== 0).sort((a, b) => Math.abs(b.w) - Math.abs(a.w));
  }
  const SPLIT_SHOWN = 8;
  function edgeTable(rows, self) {
    if (!rows.length) return el("p", { class: "muted" }, "none");
    const table = el("table", { class: "edges" + (self >= 0 ? " group-edges" : "") });
    for (const r of rows.slice(0, TOP_EDGES)) {
      const other = r.group !== undefined ? state.groups[r.group] : null;
      const ref = other ? el("button", { type: "button", class: "noderef supernode-ref", title: `supernode of ${other.members.length} nodes`,
        onclick: () => select({ group: r.group }) }, fitText("supernode " + other.name, REF_CHARS)) : noderef(nodes[r.node].id);
      const cells = [el("td", {}, ref), el("td", { class: "num " + (r.w > 0 ? "pos" : "neg") }, signed(r.w))];
      // one node's edge to another node is the drawn edge itself: nothing to split
      if (self < 0 && !other) { table.append(el("tr", {}, ...cells)); continue; }
      const split = [...r.split].filter((x) => x[1] !== 0).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
      const detail = el("tr", { class: "split", hidden: "" }, el("td", { colspan: "3" },
        el("ul", {}, ...split.slice(0, SPLIT_SHOWN).map(([i, w]) => el("li", {}, noderef(nodes[i].id, "short"), " ",
          el("span", { class: w > 0 ? "pos" : "neg" }, signed(w)))),
        ...(split.length > SPLIT_SHOWN ? [el("li", { class: "muted" }, `and ${split.length - SPLIT_SHOWN} more`)] : []))));
      const whose = self >= 0 ? "the supernode's members" : `supernode ${quote(other.name)}'s members`;
      const toggle = el("button", { type: "button", class: "split-toggle", "aria-expanded": "false",
        title: "this edge split by " + whose }, `▸ ${split.length} ${split.length === 1 ? "member" : "members"}`);
      toggle.addEventListener("click", () => {
        const open = detail.hidden;
        detail.hidden = !open;
        toggle.setAttribute("aria-expanded", String(open));
        toggle.textContent = (open ? "▾ " : "▸ ") + toggle.textContent.slice(2);
      });
      table.append(el("tr", {}, ...cells, el("td", {}, toggle)), detail);
    }
    return table;
  }
  function showGroup(k) {
    const g = state.groups[k];
    // a summary group's box says when its check is flagged and that the panel says how (a
    // review: the panel said nothing of it, the summary out of reach once a node was clicked)
    const known = summaryGroupOf(g.members), several = !!data.mechanisms && data.mechanisms.targets.length > 1;
    const named = (node) => { const t = data.mechanisms.targets.find((x) => x.node === node); return t ? targetWords(t) : node; };
    const checks = known && (known.checks.length || known.attention || known.writesQk)
      ? [el("h4", {}, `Checks (the mechanism summary's ${known.key})`),
        ...(known.writesQk ? [el("div", { class: "writes-qk" }, known.writesQk)] : []),
        ...checkLines(known, several ? named : null), legendEl()] : [];
    // a supernode the reader named gives the summary's box as its own would (its box does not)
    const box = known && !summaryNamed(g, known)
      ? [el("div", { class: "summary-box muted" }, "the mechanism summary's group: " + known.box.join(" · "))] : [];
    // its title as the printout gives it, where that says more than its name, and its members'
    // concepts (a box holds a short form of them)
    if (known && known.title && known.title !== known.name) box.push(el("div", { class: "summary-title" }, `${known.key} ${known.title}`));
    if (known && known.memberConcepts) box.push(el("div", { class: "muted member-concepts" }, known.memberConcepts));
    ui.panel.replaceChildren(
      el("h3", {}, g.name), el("div", { class: "id" }, `supernode of ${g.members.length} nodes`), ...box,
      el("div", { class: "buttons" }, el("button", { type: "button", class: "ungroup", onclick: () => ungroup(k) }, "Ungroup"), closeButton()),
      ...checks,
      el("h4", {}, "Members"),
      el("ul", {}, ...g.members.map((i) => el("li", {}, noderef(nodes[i].id)))),
      ...groupSourcesBlock(g.members),
      el("h4", {}, "Top incoming edges (summed over members, by node or supernode)"), edgeTable(edgesByItem(g.members, k, inE, src), k),
      el("h4", {}, "Top outgoing edges (summed over members, by node or supernode)"), edgeTable(edgesByItem(g.members, k, outE, tgt), k),
      qParamsBlock());
  }
  function groupSourcesBlock(members) {
    if (!meta.positional) return [];
    const { heads, qkHeads, list } = summedSources(members);
    if (!heads) return [];
    const plural = (n, one) => `${n} ${one}${n === 1 ? "" : "s"}`;
    const out = [el("h4", {}, "QK: where its heads' attention comes from"),
      el("div", { class: "muted" }, `summed over the ${plural(qkHeads, "QK head")} of its ${plural(heads, "member head")} with QK sources (each at the key it reads; heads sharing a QK head share its score, counted once), through the graph:`)];
    for (const side of ["q", "k"]) {
      const shown = list.filter((x) => x.side === side).slice(0, QK_SHOWN);
      if (!shown.length) continue;
      out.push(el("div", { class: "muted group-sources-" + side }, `${side === "q" ? "query" : "key"} side from:`),
        el("ul", { class: "group-sources" }, ...shown.map((x) => el("li", {}, `${sourceWhat(x)} `,
          el("span", { class: x.value > 0 ? "pos" : "neg" }, signed(x.value)), ` (${x.heads} of them): `,
          ...x.members.slice(0, 3).flatMap((id, j) => [j ? " " : "", noderef(id, "short")]), x.members.length > 3 ? ` and ${x.members.length - 3} more` : ""))));
    }
    out.push(featuresNote(false));
    return out;
  }
  function showIgnored(notes) {
    if (!notes.length) return;
    const more = notes.length > 3 ? `; ... and ${notes.length - 3} more` : ""; // said, not cut silently
    ui.statusText.textContent += " · ignored from the URL: " + notes.slice(0, 3).join("; ") + more;
  }
  function qParamsBlock() {
    ui.qparams = el("pre", { class: "qparams" }, JSON.stringify(data.qParams, null, 1));
    // saved as a file to put in a graph.json's "qParams" (circuit-tracer's), or to keep
    const save = el("button", { type: "button", class: "save-qparams", onclick: () => {
      const a = el("a", { download: "qParams.json",
        href: URL.createObjectURL(new Blob([JSON.stringify(data.qParams, null, 1) + "\n"], { type: "application/json" })) });
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    } }, "Save as qParams.json");
    return el("details", {}, el("summary", {}, "qParams (pins and supernodes, as in graph.json)"), save, ui.qparams);
  }

  // ----------------------------------------------------------------------------------- start
  try {
    buildChrome();
    const notes = [];
    applyParams(data.qParams, notes);
    defaults.pinned = new Set(state.pinned);
    defaults.clicked = state.clicked;
    defaults.groups = state.groups.map((g) => ({ name: g.name, members: [...g.members] }));
    defaults.budget = state.budget = boxBudget(data.view.budget, state.groups);
    readHash(notes);
    render();
    writeState();
    showPanel();
    showIgnored(notes);
    // a new window size is fitted at once and laid out again when the resizing pauses; so is
    // a new width of the viewer for any other reason
    let resized = 0, width = root.clientWidth;
    const later = () => { clearTimeout(resized); resized = setTimeout(refit, RELAYOUT_MS); };
    window.addEventListener("resize", () => { if (!state.zoom) applyZoom(); later(); });
    if (window.ResizeObserver) {
      new ResizeObserver(() => { if (root.clientWidth !== width) { width = root.clientWidth; later(); } }).observe(root);
    }
    window.viewer = {
      data, state, update,
      group: (ids, name) => addGroup(ids.map((id) => byId.get(id)), name), // as the panel's button
      drawnIds: () => view.items.filter((it) => it.drawn && it.node !== undefined).map((it) => nodes[it.node].id),
      supernodes: () => view.items.filter((it) => it.drawn && it.group !== undefined).map((it) => it.name),
      edges: () => view.edges.map((e) => [itemKey(view.items[e.s]), itemKey(view.items[e.t]), e.w]),
    };
  } catch (err) {
    root.dataset.error = String(err && err.message);
    root.prepend(el("p", { class: "note" }, "The viewer failed: " + String(err && err.message)));
    throw err;
  }
  function itemKey(it) { return it.node !== undefined ? nodes[it.node].id : "supernode:" + it.name; }
})();
