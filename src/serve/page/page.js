'use strict';
// The status page: polls /page/live (database health, jobs, chart samples) and /stats
// (tables, consumers, replicas) and rebuilds the tables. Every name and message goes in with
// textContent, never as markup.
(function () {
  const POLL_MS = 2000;
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function num(n) { return n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'); }
  function secs(s) {
    if (s === null || s === undefined) return '–';
    if (s < 1) return (s * 1000).toFixed(0) + ' ms';
    if (s < 120) return s.toFixed(1) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    if (s < 172800) return (s / 3600).toFixed(1) + ' h';
    return (s / 86400).toFixed(1) + ' d';
  }
  function time(t) {
    if (!t) return '–';
    const d = new Date(t);
    return isNaN(d) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }
  function fill(tbody, rows, cols, none) {
    if (rows.length === 0) {
      const td = el('td', none, 'muted');
      td.colSpan = cols;
      const tr = el('tr');
      tr.append(td);
      rows = [tr];
    }
    tbody.replaceChildren(...rows);
  }
  function row(cells, cls) {
    const tr = el('tr', null, cls);
    for (const c of cells) tr.append(c);
    return tr;
  }
  function cell(text, cls) { return el('td', text, cls); }
  function pill(id, text, cls) {
    const p = $(id);
    p.textContent = text;
    p.className = 'pill ' + cls;
  }

  async function getJSON(path) {
    const r = await fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' } });
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    return { status: r.status, body: body };
  }

  function renderStats(stats) {
    const tables = [];
    const consumers = [];
    for (const t of stats.tables || []) {
      const ch = t.changes || {};
      const bad = !!t.error;
      tables.push(row([
        cell(t.table, 'name'), cell(t.strategy + (t.registered ? '' : ' (not set up)')),
        cell(num(ch.insert), 'num'), cell(num(ch.update), 'num'), cell(num(ch.delete), 'num'),
        cell(num(ch.total), 'num'), cell(bad ? t.error : 'ok', bad ? 'error' : 'verdict'),
      ], bad ? 'bad' : 'ok'));
      for (const c of t.consumers || []) {
        const lagging = c.health !== 'ok';
        const pos = cell(time(c.watermark));
        pos.title = JSON.stringify(c.position);
        const who = cell(c.consumer_id, 'name');
        const kind = cell(c.kind + (c.target ? ' → ' + c.target : ''), 'name');
        const p = c.pending || {};
        const pending = cell(num(p.total), 'num pending');
        pending.title = 'inserts ' + num(p.insert) + ', updates ' + num(p.update) + ', deletes ' + num(p.delete);
        const tr = row([who, kind, cell(t.table, 'name'), pos, pending,
          cell(secs(c.lag_seconds), 'num lag'), cell(c.health, 'verdict')], lagging ? 'warn' : 'ok');
        tr.dataset.consumer = c.consumer_id;
        tr.dataset.table = t.table;
        consumers.push(tr);
      }
    }
    fill($('tables').tBodies[0], tables, 7, 'no captured table yet: tidemark setup --table NAME --strategy …');
    fill($('consumers').tBodies[0], consumers, 7, 'no consumer or replica yet: export or replicate once');
    // The lag as of now (the chart's samples are up to 10 s old).
    let lag = 0;
    for (const t of stats.tables || []) for (const c of t.consumers || []) lag = Math.max(lag, c.lag_seconds || 0);
    $('lag-now').textContent = secs(lag);
    const h = stats.health || 'unknown';
    pill('verdict', 'health: ' + h, h === 'ok' ? 'ok' : h === 'lagging' ? 'warn' : 'bad');
  }

  function renderJobs(live) {
    const rows = [];
    for (const j of live.jobs || []) {
      const outcome = j.status;
      const cls = outcome === 'completed' ? 'ok' : outcome === 'failed' ? 'bad' : 'warn';
      const file = el('td', null, 'name');
      if (outcome === 'completed' && j.output_filename && /\.(csv|jsonl|parquet)$/.test(j.output_filename)) {
        const a = el('a', j.output_filename);
        a.href = '/exports/' + encodeURIComponent(j.job_id) + '/file';
        file.append(a);
      } else if (outcome === 'completed') {
        file.textContent = 'no changes';
        file.className = 'muted';
      } else if (j.error) {
        file.textContent = j.error;
        file.className = 'error';
      } else {
        file.textContent = j.output_filename || '';
      }
      const tr = row([cell(time(j.created_at)), cell(j.consumer, 'name'), cell(j.table, 'name'),
        cell(j.mode), cell(outcome, 'verdict'), cell(num(j.rows), 'num'),
        cell(j.duration_ms === null || j.duration_ms === undefined ? '–' : secs(j.duration_ms / 1000), 'num'),
        file], cls);
      tr.dataset.job = j.job_id;
      rows.push(tr);
    }
    fill($('jobs').tBodies[0], rows, 8, 'no job since this server started');
    $('active').textContent = live.active_jobs ? live.active_jobs + ' running' : '';
  }

  function chart(id, points, key, format) {
    const box = $(id);
    const w = 300, h = 80, top = 4, bottom = 2;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    const now = Date.now();
    const from = now - 3600 * 1000;
    const pts = points.filter((p) => p.t >= from);
    const vals = pts.map((p) => p[key]).filter((v) => v !== null && v !== undefined);
    const max = Math.max(1e-9, ...vals);
    const x = (t) => ((t - from) / 3600000) * w;
    const y = (v) => top + (h - top - bottom) * (1 - v / max);
    const add = (name, attrs, text) => {
      const e = document.createElementNS(SVG, name);
      for (const k in attrs) e.setAttribute(k, attrs[k]);
      if (text !== undefined) e.textContent = text;
      svg.append(e);
      return e;
    };
    add('line', { x1: 0, x2: w, y1: y(0), y2: y(0), class: 'grid' });
    add('line', { x1: 0, x2: w, y1: y(max), y2: y(max), class: 'grid' });
    for (const p of pts) {
      if (!p.database) add('rect', { x: x(p.t) - 2, y: top, width: 4, height: h - top - bottom, class: 'down' });
    }
    const line = pts.filter((p) => p[key] !== null && p[key] !== undefined)
      .map((p) => x(p.t).toFixed(1) + ',' + y(p[key]).toFixed(1));
    if (line.length === 1) {
      // One sample so far: a short stroke, so that it shows.
      const [lx, ly] = line[0].split(',');
      line.unshift(Math.max(0, Number(lx) - 4).toFixed(1) + ',' + ly);
    }
    if (line.length > 0) {
      const first = line[0].split(',')[0], last = line[line.length - 1].split(',')[0];
      add('polygon', { points: first + ',' + y(0) + ' ' + line.join(' ') + ' ' + last + ',' + y(0), class: 'area' });
      add('polyline', { points: line.join(' '), class: 'line' });
    }
    const axis = el('div', null, 'axis');
    axis.append(el('span', '−60 min'), el('span', vals.length ? 'top ' + format(max) : 'no samples yet'), el('span', 'now'));
    box.replaceChildren(svg, axis);
    const latest = vals.length ? vals[vals.length - 1] : null;
    return latest;
  }

  function renderCharts(live) {
    const pts = live.history || [];
    const lag = chart('lag-chart', pts, 'lag_seconds', secs);
    $('lag-now').textContent = lag === null ? '' : secs(lag);
    const rate = chart('rate-chart', pts, 'rows_per_second', (v) => num(Math.round(v)) + '/s');
    $('rate-now').textContent = rate === null ? '' : num(Math.round(rate)) + '/s';
  }

  function down(message) {
    const b = $('banner');
    b.textContent = message;
    b.hidden = false;
    for (const id of ['tables', 'consumers']) $(id).classList.add('stale');
  }

  async function tick() {
    let live;
    try {
      live = await getJSON('/page/live');
    } catch (e) {
      pill('db', 'server: not answering', 'bad');
      down('tidemark serve does not answer (' + e.message + '); showing the last known state');
      return;
    }
    if (live.status !== 200 || !live.body) {
      pill('db', 'server: HTTP ' + live.status, 'bad');
      down('the page cannot read /page/live: HTTP ' + live.status + (live.body && live.body.error ? ': ' + live.body.error : ''));
      return;
    }
    renderJobs(live.body);
    renderCharts(live.body);
    $('updated').textContent = 'updated ' + time(live.body.timestamp);
    if (live.body.database !== 'ok') {
      pill('db', 'database: down', 'bad');
      pill('verdict', 'health: unknown', 'bad');
      down('The database is down: ' + (live.body.database_error || 'it does not answer') +
        '. Tables and consumers below are the last known state.');
      return;
    }
    pill('db', 'database: ok', 'ok');
    let stats;
    try {
      stats = await getJSON('/stats');
    } catch (e) {
      down('/stats does not answer: ' + e.message);
      return;
    }
    if (stats.status !== 200 || !stats.body) {
      down('/stats answered HTTP ' + stats.status + (stats.body && stats.body.error ? ': ' + stats.body.error : ''));
      return;
    }
    $('banner').hidden = true;
    for (const id of ['tables', 'consumers']) $(id).classList.remove('stale');
    renderStats(stats.body);
  }

  async function loop() {
    try { await tick(); } catch (e) { down('the page failed: ' + e.message); }
    setTimeout(loop, POLL_MS);
  }
  loop();
})();
