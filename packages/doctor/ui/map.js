// The mesh map page. Span data (names, services, attributes) is untrusted: it only ever reaches the
// page as textContent or an attribute value, never as markup. The server computes the map and its
// layout (/api/doctor/graph); this file draws it, opens edges and runs the probe form.
'use strict';

(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const STATES = ['continued', 'missing', 'malformed', 'restarted', 'new-trace', 'unanswered', 'untraced'];
  const WORDS = {
    continued: 'continued',
    missing: 'missing',
    malformed: 'malformed',
    restarted: 'distrusted/restarted',
    'new-trace': 'new trace',
    unanswered: 'unanswered',
    untraced: 'untraced peer',
  };
  const MEANING = {
    continued: 'the callee continued the caller’s trace',
    missing: 'no traceparent reached the callee: it started a new trace',
    malformed: 'the traceparent that arrived could not be read: a new trace',
    restarted: 'the callee distrusted the caller’s context and restarted (or ignored) it',
    'new-trace': 'the callee started a new trace and records no propagation outcome',
    unanswered: 'the callee exports spans but recorded none for this call',
    untraced: 'the peer exports no spans at all (outside the mesh?)',
  };
  const EVIDENCE = {
    'parent-link': 'parent link',
    peer: 'the caller’s peer address',
    'probe-id': 'probe id (callee only)',
    'request-id': 'x-request-id (callee only)',
    none: 'the caller’s span alone',
  };
  const KIND_WORDS = { service: 'service', proxy: 'proxy', peer: 'untraced peer', unknown: 'no span names it' };
  const MAX_WORD_LINES = 2;

  const $ = (id) => document.getElementById(id);
  const state = {
    by: new URLSearchParams(location.search).get('by') ?? '',
    data: null,
    fetching: false,
    dirty: false,
    selected: null,
    highlight: { nodes: new Set(), edges: new Set() },
    events: null,
  };

  /** An HTML element; children are nodes or strings (as text). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs ?? {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
    for (const c of children)
      if (c !== undefined && c !== null) el.append(typeof c === 'string' ? document.createTextNode(c) : c);
    return el;
  }
  /** An SVG element, with text set through textContent. */
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs ?? {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  const shareWords = (states) => STATES.filter((k) => states[k] > 0).map((k) => `${states[k]} ${WORDS[k]}`);
  const nodeById = (id) => state.data?.map.nodes.find((n) => n.id === id);
  const nodeName = (n) => (n ? (n.group ? `${n.label} (${n.group})` : n.label) : '?');
  const edgeTitle = (e) => `${nodeName(nodeById(e.from))} → ${nodeName(nodeById(e.to))}`;
  const edgeSummary = (e) =>
    `${edgeTitle(e)}: ${plural(e.calls, 'call')}${e.lost > 0 ? `, ${e.lost} lost the trace` : ''}: ${shareWords(e.states).join(', ')}`;

  function legend() {
    const ul = $('legend');
    ul.replaceChildren(
      ...STATES.map((k) =>
        h('li', { title: MEANING[k] }, h('span', { class: `swatch share-${k}`, 'aria-hidden': 'true' }), WORDS[k]),
      ),
      h('li', {}, 'red dashed edge: calls lost their trace'),
    );
  }

  function status(text) {
    $('status').textContent = text;
  }

  /** A share bar in SVG: one rect per state with calls, in proportion. */
  function svgBar(states, calls, x, y, width, height) {
    const g = s('g', { 'aria-hidden': 'true' });
    let at = x;
    for (const k of STATES) {
      if (!states[k]) continue;
      const w = (states[k] / calls) * width;
      g.append(s('rect', { x: at.toFixed(1), y, width: Math.max(w, 1.5).toFixed(1), height, class: `share-${k}` }));
      at += w;
    }
    g.append(s('rect', { x, y, width, height, fill: 'none', stroke: 'currentColor', 'stroke-opacity': '0.35' }));
    return g;
  }

  function activate(el, open) {
    el.addEventListener('click', open);
    el.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        open();
      }
    });
  }

  function drawMap() {
    const svg = $('map');
    const { map, layout } = state.data;
    const focused = document.activeElement?.getAttribute?.('data-id') ?? null;
    const width = Math.max(layout.width, 320);
    const height = Math.max(layout.height, 160);
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.setAttribute('width', String(width));
    svg.setAttribute('height', String(height));
    const defs = s('defs');
    const marker = s('marker', {
      id: 'arrow',
      viewBox: '0 0 10 10',
      refX: '10',
      refY: '5',
      markerUnits: 'userSpaceOnUse',
      markerWidth: '11',
      markerHeight: '11',
      orient: 'auto-start-reverse',
    });
    marker.append(s('path', { d: 'M 0 0 L 10 5 L 0 10 z' }));
    defs.append(marker);
    const lines = s('g');
    const nodes = s('g');
    const labels = s('g');
    if (map.nodes.length === 0) {
      labels.append(s('text', { x: 20, y: 40 }, 'No spans yet: point the services’ OTLP exporter at this receiver.'));
    }
    for (const e of map.edges) {
      const route = layout.edges[e.id];
      if (!route) continue;
      const lossy = e.lost > 0;
      const untraced = e.states.untraced === e.calls;
      const on = state.highlight.edges.has(e.id);
      const d = route.points.map((p, i) => `${i === 0 ? 'M' : 'L'} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(' ');
      lines.append(
        s('path', {
          d,
          class: `edge-line${lossy ? ' lossy' : ''}${untraced ? ' untraced' : ''}${on ? ' on-path' : ''}`,
          'marker-end': 'url(#arrow)',
        }),
      );
      const x = route.x - route.width / 2;
      const y = route.y - route.height / 2;
      const g = s('g', {
        class: `edge-label${lossy ? ' lossy' : ''}${on ? ' on-path' : ''}${state.selected === e.id ? ' selected' : ''}`,
        tabindex: '0',
        role: 'button',
        'data-id': e.id,
        'data-kind': 'edge',
        'aria-label': edgeSummary(e),
      });
      g.append(s('title', {}, edgeSummary(e)));
      g.append(s('rect', { class: 'box', x, y, width: route.width, height: route.height, rx: 5 }));
      const head = s('text', { x: x + 8, y: y + 16, class: 'calls' });
      head.append(s('tspan', {}, plural(e.calls, 'call')));
      if (lossy) head.append(s('tspan', { class: 'lost' }, ` · ${e.lost} LOST`));
      g.append(head);
      g.append(svgBar(e.states, e.calls, x + 8, y + 22, route.width - 16, 10));
      const words = shareWords(e.states);
      const perLine = 2;
      for (let i = 0; i < MAX_WORD_LINES && i * perLine < words.length; i++) {
        let text = words.slice(i * perLine, i * perLine + perLine).join(' · ');
        if (i === MAX_WORD_LINES - 1 && words.length > MAX_WORD_LINES * perLine)
          text = `${words[i * perLine]} · +${words.length - i * perLine - 1} more`;
        g.append(s('text', { x: x + 8, y: y + 45 + i * 14, class: 'words' }, text));
      }
      activate(g, () => openEdge(e.id));
      labels.append(g);
    }
    for (const n of map.nodes) {
      const box = layout.nodes[n.id];
      if (!box) continue;
      const x = box.x - box.width / 2;
      const y = box.y - box.height / 2;
      const entries = Object.values(n.entries).reduce((a, b) => a + b, 0);
      const sub = [
        n.group,
        n.kind === 'service' ? '' : KIND_WORDS[n.kind],
        n.received > 0 ? `${n.received} received` : '',
      ]
        .filter(Boolean)
        .join(' · ');
      const label = `${n.label}, ${KIND_WORDS[n.kind]}${n.group ? `, ${n.group}` : ''}${n.received ? `, received ${n.received}` : ''}${entries ? `, ${entries} from outside the map` : ''}`;
      const g = s('g', {
        class: `node ${n.kind}${state.highlight.nodes.has(n.id) ? ' on-path' : ''}${state.selected === n.id ? ' selected' : ''}`,
        tabindex: '0',
        role: 'button',
        'data-id': n.id,
        'data-kind': 'node',
        'aria-label': label,
      });
      g.append(s('title', {}, label));
      g.append(s('rect', { class: 'box', x, y, width: box.width, height: box.height, rx: n.kind === 'proxy' ? 2 : 8 }));
      g.append(s('text', { x: box.x, y: y + 22, 'text-anchor': 'middle', class: 'name' }, n.label));
      g.append(s('text', { x: box.x, y: y + 41, 'text-anchor': 'middle', class: 'sub' }, sub));
      activate(g, () => openNode(n.id));
      nodes.append(g);
    }
    svg.replaceChildren(s('title', {}, 'The mesh map'), defs, lines, nodes, labels);
    if (focused !== null) {
      for (const el of svg.querySelectorAll('[data-id]')) if (el.getAttribute('data-id') === focused) el.focus();
    }
  }

  function drawStatus() {
    const { map, window: w } = state.data;
    const lossy = map.edges.filter((e) => e.lost > 0).length;
    const parts = [
      `${plural(map.nodes.length, 'node')}, ${plural(map.edges.length, 'edge')}${lossy > 0 ? `, ${lossy} losing traces` : ''}`,
      `window: ${plural(w.spans, 'span')} in ${plural(w.traces, 'trace')}`,
    ];
    if (w.evicted > 0) parts.push(`${w.evicted} older spans evicted`);
    if (map.healthChecks > 0) parts.push(`${map.healthChecks} health-check spans left out`);
    if (map.omitted.nodes > 0) parts.push(`${map.omitted.nodes} least busy nodes not drawn`);
    parts.push($('live').checked ? 'following new spans' : 'paused');
    status(parts.join('; '));
  }

  function drawSplit() {
    const select = $('by');
    const keys = [...new Set([...(state.data.splitBy ?? []), ...(state.by ? [state.by] : [])])];
    const current = [...select.options].map((o) => o.value).join('\n');
    if (current === ['', ...keys].join('\n')) return;
    select.replaceChildren(h('option', { value: '' }, 'nothing'), ...keys.map((k) => h('option', { value: k }, k)));
    select.value = state.by;
  }

  async function refresh() {
    if (state.fetching) {
      state.dirty = true;
      return;
    }
    state.fetching = true;
    try {
      const res = await fetch(`/api/doctor/graph?by=${encodeURIComponent(state.by)}`, { cache: 'no-store' });
      if (!res.ok) throw new Error(`the receiver answered ${res.status}`);
      state.data = await res.json();
      drawSplit();
      drawMap();
      drawStatus();
      if (!state.data.probe.enabled) {
        $('probe-run').disabled = true;
        $('probe-result').replaceChildren(h('p', {}, state.data.probe.reason));
      }
    } catch (err) {
      status(`could not read the map: ${err.message}`);
    } finally {
      state.fetching = false;
      if (state.dirty) {
        state.dirty = false;
        void refresh();
      }
    }
  }

  function countsTable(e) {
    const rows = STATES.filter((k) => e.states[k] > 0).map((k) =>
      h(
        'tr',
        {},
        h('th', { scope: 'row' }, h('span', { class: `swatch share-${k}`, 'aria-hidden': 'true' }), WORDS[k]),
        h('td', {}, String(e.states[k])),
        h('td', {}, `${Math.round((e.states[k] / e.calls) * 100)}%`),
        h('td', {}, MEANING[k]),
      ),
    );
    return h(
      'table',
      { class: 'counts' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          h('th', {}, 'how the callee received it'),
          h('th', {}, 'calls'),
          h('th', {}, 'share'),
          h('th', {}, 'meaning'),
        ),
      ),
      h('tbody', {}, ...rows),
    );
  }

  function htmlBar(states, calls) {
    const bar = h('div', { class: 'bar-html', 'aria-hidden': 'true' });
    for (const k of STATES) {
      if (!states[k]) continue;
      const seg = h('div', { class: `share-${k}` });
      seg.style.width = `${(states[k] / calls) * 100}%`;
      bar.append(seg);
    }
    return bar;
  }

  function waterfallView(traces) {
    const box = h('div', { class: 'waterfall' });
    if (!traces || traces.length === 0) {
      box.append(h('p', {}, 'The spans of this call have left the window.'));
      return box;
    }
    for (const t of traces) {
      box.append(h('div', { class: `wf-head ${t.headline}` }, `trace ${t.traceId}  ${t.text}`));
      for (const r of t.rows) {
        const service = h('span', { title: r.service }, r.service);
        service.style.paddingLeft = `${r.depth * 0.9}rem`;
        const track = h('span', { class: 'wf-track', 'aria-hidden': 'true' });
        const bar = h('span', { class: 'wf-bar' });
        bar.style.left = `${r.offset}%`;
        bar.style.width = `${r.width}%`;
        track.append(bar);
        box.append(
          h(
            'div',
            { class: 'wf-row', role: 'listitem' },
            service,
            h('span', { title: r.name }, r.name),
            h('span', {}, r.kind),
            h('span', { class: r.orphan ? 'orphan' : r.warn ? 'warn' : '', title: r.note }, r.note),
            track,
            h('span', { class: 'wf-ms' }, `${r.durationMs.toFixed(1)} ms`),
          ),
        );
      }
    }
    box.setAttribute('role', 'list');
    return box;
  }

  function exampleView(title, ex) {
    const part = h('section', { class: 'example' }, h('h3', {}, title));
    if (!ex) {
      part.append(h('p', {}, 'none in the window'));
      return part;
    }
    const callee = ex.callee;
    part.append(
      h(
        'p',
        {},
        h('strong', {}, WORDS[ex.state]),
        ' — ',
        callee
          ? `${callee.service}'s ${callee.kind.toUpperCase()} span "${callee.name}" (${callee.spanId}) recorded ${ex.outcome ? `outcome ${ex.outcome}` : 'no propagation outcome'}`
          : 'the callee recorded no span for this call',
      ),
      h('p', { class: 'evidence' }, h('strong', {}, `Evidence (${EVIDENCE[ex.evidence]}): `), ex.detail),
      waterfallView(ex.waterfall),
    );
    return part;
  }

  async function openEdge(id) {
    state.selected = id;
    for (const el of $('map').querySelectorAll('.selected')) el.classList.remove('selected');
    for (const el of $('map').querySelectorAll('[data-id]'))
      if (el.getAttribute('data-id') === id) el.classList.add('selected');
    const detail = $('detail');
    detail.replaceChildren(h('h2', {}, 'Opening the edge…'));
    const res = await fetch(`/api/doctor/edge?id=${encodeURIComponent(id)}&by=${encodeURIComponent(state.by)}`, {
      cache: 'no-store',
    });
    const body = await res.json();
    if (!res.ok) {
      detail.replaceChildren(h('h2', {}, 'That edge is gone'), h('p', {}, body.error ?? `HTTP ${res.status}`));
      return;
    }
    const e = body.edge;
    const title = `${nodeName(body.from)} → ${nodeName(body.to)}`;
    const reasons = Object.entries(e.reasons);
    const evidence = Object.entries(e.evidence).map(([k, n]) => `${n} by ${EVIDENCE[k]}`);
    const parts = [
      h('h2', { id: 'edge-title' }, title),
      h(
        'p',
        {},
        `${plural(e.calls, 'call')} in the window; `,
        e.lost > 0 ? h('strong', {}, `${e.lost} lost the trace`) : 'none lost the trace',
      ),
      htmlBar(e.states, e.calls),
      countsTable(e),
      reasons.length > 0 ? h('p', {}, `Reasons: ${reasons.map(([r, n]) => `${r} ×${n}`).join(', ')}`) : null,
      h('p', {}, `Tied by: ${evidence.join(', ')}`),
      exampleView(e.states.untraced === e.calls ? 'Latest call' : 'Latest broken call', body.broken),
      exampleView('Latest whole call', body.whole),
    ];
    detail.replaceChildren(...parts.filter((p) => p !== null));
    detail.focus();
  }

  function openNode(id) {
    const n = nodeById(id);
    if (!n) return;
    state.selected = id;
    const edges = state.data.map.edges;
    const item = (e) => {
      const b = h('button', { type: 'button' }, edgeSummary(e));
      b.addEventListener('click', () => openEdge(e.id));
      return h('li', {}, b);
    };
    const entries = STATES.filter((k) => n.entries[k] > 0).map((k) => `${n.entries[k]} ${WORDS[k]}`);
    const parts = [
      h('h2', {}, nodeName(n)),
      h('p', {}, `${KIND_WORDS[n.kind]}; ${n.received} SERVER or CONSUMER spans in the window`),
      entries.length > 0
        ? h(
            'p',
            {},
            `Calls whose caller is no span on the map (from outside, or new traces at the edge): ${entries.join(', ')}`,
          )
        : null,
      h('h3', {}, 'Called by'),
      h('ul', { class: 'plain' }, ...edges.filter((e) => e.to === id).map(item)),
      h('h3', {}, 'Calls'),
      h('ul', { class: 'plain' }, ...edges.filter((e) => e.from === id).map(item)),
    ];
    $('detail').replaceChildren(...parts.filter((p) => p !== null));
    $('detail').focus();
  }

  function showProbe(body) {
    const out = $('probe-result');
    if (body.error || !body.report) {
      out.replaceChildren(
        h('p', {}, h('strong', { class: 'verdict unknown' }, 'could not probe: '), body.error ?? 'no report'),
      );
      return;
    }
    const r = body.report;
    const parts = [
      h(
        'p',
        {},
        h('strong', { class: `verdict ${r.verdict}`, id: 'probe-verdict' }, r.verdict.toUpperCase()),
        ` (exit code ${r.exitCode}) for ${r.url}`,
      ),
    ];
    for (const p of r.probes) {
      parts.push(
        h(
          'p',
          {},
          `HTTP ${p.status ?? '—'}; ${plural(p.spans, 'span')} from ${p.services.join(', ') || 'no service'} in ${plural(p.traces.length, 'trace')}`,
        ),
      );
      if (p.reason) parts.push(h('p', {}, p.reason));
      if (p.breaks.length > 0)
        parts.push(
          h('h3', {}, 'Breaks'),
          h(
            'ul',
            { class: 'plain probe-breaks' },
            ...p.breaks.map((b) => h('li', {}, h('strong', {}, `${b.hop.from ?? '?'} → ${b.hop.to}`), `: ${b.detail}`)),
          ),
        );
      if (p.hops.length > 0)
        parts.push(
          h('h3', {}, 'Hops'),
          h(
            'ul',
            { class: 'plain probe-hops' },
            ...p.hops.map((x) =>
              h(
                'li',
                {},
                `${x.from ?? '?'} → ${x.to}${x.proxies.length ? ` via ${x.proxies.join(' → ')}` : ''}: ${x.state}${x.evidence ? ` (${EVIDENCE[x.evidence] ?? x.evidence})` : ''}`,
              ),
            ),
          ),
        );
      for (const u of p.untracedPeers)
        parts.push(h('p', {}, `untraced peer ${u.address}${u.path ?? ''} (called by ${u.caller})`));
      parts.push(h('p', { class: 'hint' }, p.waited));
    }
    const clear = h('button', { type: 'button' }, 'Clear the path on the map');
    clear.addEventListener('click', () => {
      state.highlight = { nodes: new Set(), edges: new Set() };
      drawMap();
    });
    parts.push(clear);
    out.replaceChildren(...parts);
  }

  async function probe(ev) {
    ev.preventDefault();
    const url = $('probe-url').value.trim();
    if (!/^https?:\/\//i.test(url)) {
      $('probe-result').replaceChildren(h('p', {}, 'Give an http:// or https:// URL.'));
      return;
    }
    const button = $('probe-run');
    button.disabled = true;
    $('probe-result').replaceChildren(h('p', {}, `Probing ${url}: sending one request, then waiting for its spans…`));
    try {
      const res = await fetch(`/api/doctor/probe?by=${encodeURIComponent(state.by)}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ url, batchDelayMs: $('probe-delay').value }),
      });
      const body = await res.json();
      if (!res.ok) {
        $('probe-result').replaceChildren(h('p', {}, `The probe was refused: ${body.error ?? `HTTP ${res.status}`}`));
        return;
      }
      state.highlight = { nodes: new Set(body.highlight.nodes), edges: new Set(body.highlight.edges) };
      showProbe(body);
      await refresh();
    } catch (err) {
      $('probe-result').replaceChildren(h('p', {}, `The probe failed: ${err.message}`));
    } finally {
      button.disabled = false;
    }
  }

  function follow() {
    if (state.events) state.events.close();
    state.events = null;
    if (!$('live').checked) {
      if (state.data) drawStatus();
      return;
    }
    state.events = new EventSource('/api/doctor/events');
    state.events.addEventListener('spans', () => void refresh());
    void refresh();
  }

  function start() {
    legend();
    $('by').addEventListener('change', () => {
      state.by = $('by').value;
      const url = new URL(location.href);
      if (state.by) url.searchParams.set('by', state.by);
      else url.searchParams.delete('by');
      history.replaceState(null, '', url);
      state.highlight = { nodes: new Set(), edges: new Set() };
      void refresh();
    });
    $('live').addEventListener('change', follow);
    $('probe-form').addEventListener('submit', (ev) => void probe(ev));
    follow();
  }

  start();
})();
