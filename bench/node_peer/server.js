'use strict';
// The common Node.js design of Ripple's endpoints, measured beside it by the benchmark
// (`python -m bench run --peer node`, docs/benchmarks.md "Against a Node.js peer").
//
// node:http + pg, node:cluster with WEB_CONCURRENCY workers, one LISTEN connection per
// worker and a Set of open responses that every notification is written to. Same schema
// (migrated by Alembic), same statements and NOTIFY payloads ('activity:<id>' on channel
// 'ripple', in the writer's own statement), same SSE frames and Last-Event-ID replay.
// Item fragments are rendered once per worker (a Map), concurrent misses and concurrent
// `?after=` reads share one query. No throttling, no bounded buffers: that is the design.
//
// Environment: DATABASE_URL, PORT, WEB_CONCURRENCY (2), SECRET_KEY, HOST (127.0.0.1).

const cluster = require('node:cluster');
const http = require('node:http');
const crypto = require('node:crypto');
const { Pool, Client } = require('pg');

const CHANNEL = 'ripple';
const FEED_LOCK_KEY = 0x524950504c45; // "RIPPLE", the app's feed lock (app.services.feed)
const PAGE_SIZE = 50;
const REPLAY_LIMIT = 500;
const ITEM_CACHE_MAX = 4096;
const PING_MS = 15000;
const RETRY_MS = 1000;
const WORKERS = Number(process.env.WEB_CONCURRENCY || 2);
const PORT = Number(process.env.PORT || 8000);
const HOST = process.env.HOST || '127.0.0.1';
const SECRET = process.env.SECRET_KEY || 'node-peer-development-key';
const DATABASE_URL = (process.env.DATABASE_URL || '').replace(/^postgresql\+asyncpg:/, 'postgresql:');

if (cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  let stopping = false;
  cluster.on('exit', (worker, code) => {
    if (!stopping) console.error(`worker ${worker.process.pid} exited with ${code}`);
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
  });
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The benchmark's profiler: the first SIGUSR2 starts a CPU profile in every worker, the
  // next writes each one to $NODE_PEER_PROFILE_DIR (bench/profile.py reads them).
  process.on('SIGUSR2', () => {
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGUSR2');
  });
} else {
  worker();
}

function worker() {
  const pool = new Pool({ connectionString: DATABASE_URL, max: 16 });
  const workerId = `node-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  const subs = new Set(); // open streams: { res, upto, pending }
  const itemCache = new Map(); // id -> { body, etag }, insertion order = age
  const itemReads = new Map(); // id -> Promise (concurrent misses share one query)
  const afterReads = new Map(); // after -> Promise (concurrent ?after= share one query)
  const streamsPerVisitor = new Map();
  let listenerConnected = false;
  let newestActivity = 0;

  // -- the bus --------------------------------------------------------------------------

  function frame(event, data, id) {
    return `event: ${event}\n${id === undefined ? '' : `id: ${id}\n`}data: ${data}\n\n`;
  }

  function broadcast(chunk, activityId) {
    for (const sub of subs) {
      if (sub.pending) sub.pending.push([chunk, activityId]);
      else if (activityId === 0 || activityId > sub.upto) sub.res.write(chunk);
    }
  }

  function onNotification(msg) {
    if (msg.channel !== CHANNEL) return;
    const at = msg.payload.indexOf(':');
    if (at < 0) return;
    const kind = msg.payload.slice(0, at);
    const ref = msg.payload.slice(at + 1);
    if (kind === 'activity') {
      const id = Number(ref);
      if (id > newestActivity) newestActivity = id;
      broadcast(frame('activity', ref, ref), id);
    } else if (kind === 'counter' || kind === 'presence') {
      broadcast(frame(kind, ref), 0);
    } else if (kind === 'resync') {
      itemCache.clear();
      broadcast(frame('resync', ref, newestActivity), 0);
    }
  }

  async function listen() {
    const client = new Client({ connectionString: DATABASE_URL, keepAlive: true });
    client.on('notification', onNotification);
    client.on('error', () => {});
    client.on('end', () => {
      listenerConnected = false;
      setTimeout(() => listen().catch(() => {}), 1000);
    });
    await client.connect();
    await client.query(`LISTEN ${CHANNEL}`);
    if (listenerConnected === false && subs.size) {
      broadcast(frame('resync', 'listener-reconnected', newestActivity), 0);
    }
    listenerConnected = true;
  }

  setInterval(() => broadcast(frame('ping', ''), 0), PING_MS).unref();

  // -- identity and CSRF (HMAC cookies, as the app's) ----------------------------------------

  function sign(value) {
    return crypto.createHmac('sha256', SECRET).update(value).digest('base64url').slice(0, 27);
  }

  function cookies(req) {
    const jar = {};
    for (const part of (req.headers.cookie || '').split(';')) {
      const i = part.indexOf('=');
      if (i > 0) jar[part.slice(0, i).trim()] = part.slice(i + 1).trim();
    }
    return jar;
  }

  function visitor(req) {
    const raw = cookies(req).ripple_visitor || '';
    const [id, name64, mac] = raw.split('.');
    if (!id || !mac || sign(`${id}.${name64}`) !== mac) return null;
    return { id, name: Buffer.from(name64, 'base64url').toString() };
  }

  function csrfOk(req) {
    const token = cookies(req).csrftoken || '';
    const [nonce, mac] = token.split('.');
    return Boolean(nonce && mac && sign(nonce) === mac && req.headers['x-csrftoken'] === token);
  }

  // -- rendering ------------------------------------------------------------------------

  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&#34;', "'": '&#39;' };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);
  const MONTHS = 'Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec'.split(' ');
  const two = (n) => String(n).padStart(2, '0');

  function renderItem(row) {
    const d = row.created_at;
    const iso = `${d.getUTCFullYear()}-${two(d.getUTCMonth() + 1)}-${two(d.getUTCDate())}T${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}+00:00`;
    const shown = `${two(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()}, ${two(d.getUTCHours())}:${two(d.getUTCMinutes())} UTC`;
    const author = row.author_id.replace(/-/g, '');
    const who = `<span class="item-author item-who">${esc(row.author_name)}</span>`;
    let head = who;
    if (row.kind === 'renamed') head = `<span class="item-author">${esc(row.body)}</span> <span class="item-action">is now</span> ${who}`;
    else if (row.kind === 'joined') head = `${who} <span class="item-action">joined</span>`;
    const body = row.kind === 'message' ? `\n    <p class="item-body">${esc(row.body)}</p>` : '';
    return (
      `<li id="activity-${row.id}" class="item item--${row.kind}" data-id="${row.id}" data-author-id="${author}">\n` +
      `  <span class="avatar hue-${author.slice(-1)}" aria-hidden="true">${esc((row.author_name[0] || '?').toUpperCase())}</span>\n` +
      `  <div class="item-main">\n    <p class="item-head">${head}\n      <time datetime="${iso}">${shown}</time>\n    </p>${body}\n  </div>\n</li>`
    );
  }

  function cachedItem(row) {
    let entry = itemCache.get(Number(row.id));
    if (entry === undefined) {
      const body = Buffer.from(renderItem(row));
      const etag = `"${crypto.createHash('sha256').update(body).digest('hex').slice(0, 20)}"`;
      entry = { body, etag };
      itemCache.set(Number(row.id), entry);
      if (itemCache.size > ITEM_CACHE_MAX) itemCache.delete(itemCache.keys().next().value);
    }
    return entry;
  }

  function shared(map, key, read) {
    let promise = map.get(key);
    if (promise === undefined) {
      promise = read().finally(() => map.delete(key));
      map.set(key, promise);
    }
    return promise;
  }

  const COLUMNS = 'id, kind, author_id, author_name, body, created_at, hidden_at';

  function readItem(id) {
    return shared(itemReads, id, async () => {
      const { rows } = await pool.query({ name: 'item', text: `SELECT ${COLUMNS} FROM activity WHERE id = $1`, values: [id] });
      return rows[0] || null;
    });
  }

  function readAfter(after) {
    return shared(afterReads, after, async () => {
      const { rows } = await pool.query({
        name: 'after',
        text: `SELECT ${COLUMNS} FROM activity WHERE id > $1 AND hidden_at IS NULL ORDER BY id ASC LIMIT ${PAGE_SIZE}`,
        values: [after],
      });
      return rows.reverse();
    });
  }

  function list(rows, hasOlder) {
    const items = rows.map((r) => cachedItem(r).body.toString()).join('\n');
    return `<ol class="feed" data-has-older="${hasOlder}">\n${items}\n</ol>`;
  }

  // -- HTTP -----------------------------------------------------------------------------

  const FRAGMENT_VARY = 'Accept, HX-Request';

  function send(res, status, body, headers = {}) {
    res.writeHead(status, { 'content-length': Buffer.byteLength(body), ...headers });
    res.end(body);
  }

  const html = (res, status, body, extra = {}) =>
    send(res, status, body, { 'content-type': 'text/html; charset=utf-8', ...extra });
  const json = (res, status, value, extra = {}) =>
    send(res, status, JSON.stringify(value), { 'content-type': 'application/json', ...extra });
  const wantsJson = (req) => (req.headers.accept || '').includes('application/json');

  function readBody(req) {
    return new Promise((resolve, reject) => {
      const parts = [];
      let size = 0;
      req.on('data', (c) => {
        size += c.length;
        if (size > 16384) reject(new Error('body too large'));
        else parts.push(c);
      });
      req.on('end', () => resolve(Buffer.concat(parts).toString()));
      req.on('error', reject);
    });
  }

  async function ensureRecorded(db, who) {
    const inserted = await db.query(
      'INSERT INTO visitors (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id',
      [who.id, who.name],
    );
    if (inserted.rowCount) {
      await db.query(
        `INSERT INTO activity (kind, author_id, author_name, body)
         SELECT 'joined', $1, $2, '' FROM (SELECT pg_advisory_xact_lock(${FEED_LOCK_KEY})) l
         RETURNING pg_notify('${CHANNEL}', 'activity:' || id)`,
        [who.id, who.name],
      );
    }
  }

  async function inTransaction(work) {
    const db = await pool.connect();
    try {
      await db.query('BEGIN');
      const out = await work(db);
      await db.query('COMMIT');
      return out;
    } catch (err) {
      await db.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      db.release();
    }
  }

  const POST_STATEMENT = `INSERT INTO activity (kind, author_id, author_name, body)
    SELECT 'message', v.id, v.name, $2 FROM visitors v
    JOIN (SELECT pg_advisory_xact_lock(${FEED_LOCK_KEY}) AS locked) l ON true
    WHERE v.id = $1 RETURNING ${COLUMNS}, pg_notify('${CHANNEL}', 'activity:' || id)`;

  async function postActivity(req, res) {
    const who = visitor(req);
    if (!who || !csrfOk(req)) return json(res, 403, { detail: 'CSRF token missing or wrong' });
    const form = new URLSearchParams(await readBody(req));
    const message = (form.get('message') || '').trim();
    if (message.length < 1 || message.length > 280) {
      return json(res, 422, { detail: 'message must be 1 to 280 characters' });
    }
    let { rows } = await pool.query({ name: 'post', text: POST_STATEMENT, values: [who.id, message] });
    if (!rows.length) {
      rows = await inTransaction(async (db) => {
        await ensureRecorded(db, who);
        return (await db.query(POST_STATEMENT, [who.id, message])).rows;
      });
    }
    const row = rows[0];
    if (wantsJson(req)) return json(res, 201, { id: Number(row.id) }, { 'cache-control': 'no-store' });
    return html(res, 201, cachedItem(row).body, { 'cache-control': 'no-store' });
  }

  async function increment(req, res) {
    if (!visitor(req) || !csrfOk(req)) return json(res, 403, { detail: 'CSRF token missing or wrong' });
    const { rows } = await pool.query({
      name: 'increment',
      text: `UPDATE counters SET value = value + 1 WHERE id = 1 RETURNING value, pg_notify('${CHANNEL}', 'counter:1')`,
    });
    const value = Number(rows[0].value);
    if (wantsJson(req)) return json(res, 200, { value }, { 'cache-control': 'no-store' });
    return html(res, 200, counterHtml(value), { 'cache-control': 'no-store' });
  }

  const counterHtml = (v) => `<span class="counter-value" data-value="${v}">${v.toLocaleString('en-US')}</span>`;

  async function itemFragment(req, res, id) {
    let entry = itemCache.get(id);
    if (entry === undefined) {
      const row = await readItem(id);
      if (row === null) return html(res, 404, 'No such feed item.', { 'cache-control': 'no-store' });
      if (row.hidden_at !== null) return html(res, 410, 'This item was removed by a moderator.', { 'cache-control': 'no-store' });
      entry = cachedItem(row);
    }
    const headers = { etag: entry.etag, 'cache-control': 'public, max-age=300, immutable', vary: FRAGMENT_VARY };
    if (req.headers['if-none-match'] === entry.etag) {
      res.writeHead(304, headers);
      return res.end();
    }
    return html(res, 200, entry.body, headers);
  }

  async function listFragment(req, res, query) {
    const after = query.get('after');
    const before = query.get('before');
    const headers = { 'cache-control': 'no-cache', vary: FRAGMENT_VARY };
    if (after !== null) {
      if (!/^\d{1,18}$/.test(after)) return html(res, 400, 'after must be a feed item id', headers);
      return html(res, 200, list(await readAfter(Number(after)), false), headers);
    }
    if (before !== null && !/^\d{1,18}$/.test(before)) return html(res, 400, 'before must be a feed item id', headers);
    const { rows } = await pool.query(
      `SELECT ${COLUMNS} FROM activity WHERE hidden_at IS NULL ${before === null ? '' : 'AND id < $1'} ORDER BY id DESC LIMIT ${PAGE_SIZE + 1}`,
      before === null ? [] : [before],
    );
    return html(res, 200, list(rows.slice(0, PAGE_SIZE), rows.length > PAGE_SIZE), headers);
  }

  async function presenceJoin(who) {
    const count = (streamsPerVisitor.get(who.id) || 0) + 1;
    streamsPerVisitor.set(who.id, count);
    if (count > 1) return;
    await inTransaction(async (db) => {
      await ensureRecorded(db, who);
      await db.query(
        `INSERT INTO presence (worker_id, visitor_id) VALUES ($1, $2) ON CONFLICT DO NOTHING
         RETURNING pg_notify('${CHANNEL}', 'presence:' || replace(visitor_id::text, '-', ''))`,
        [workerId, who.id],
      );
    });
  }

  function presenceLeave(who) {
    const count = (streamsPerVisitor.get(who.id) || 1) - 1;
    if (count > 0) return streamsPerVisitor.set(who.id, count);
    streamsPerVisitor.delete(who.id);
    pool
      .query(
        `DELETE FROM presence WHERE worker_id = $1 AND visitor_id = $2
         RETURNING pg_notify('${CHANNEL}', 'presence:' || replace(visitor_id::text, '-', ''))`,
        [workerId, who.id],
      )
      .catch(() => {});
  }

  async function events(req, res, query) {
    const raw = req.headers['last-event-id'] || query.get('last_event_id');
    const cursor = raw && /^\d{1,18}$/.test(raw) ? Number(raw) : null;
    const who = visitor(req);
    const sub = { res, upto: 0, pending: [] };
    subs.add(sub); // before the replay query, so nothing falls in between
    res.on('close', () => {
      subs.delete(sub);
      if (who) presenceLeave(who);
    });
    let first = `retry: ${RETRY_MS}\n${frame('ping', '')}`;
    if (cursor !== null) {
      const { rows } = await pool.query({
        name: 'replay',
        text: `SELECT (SELECT max(id) FROM activity) AS newest,
          (SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM activity WHERE id > $1
           AND hidden_at IS NULL ORDER BY id LIMIT $2) m) AS ids`,
        values: [cursor, REPLAY_LIMIT + 1],
      });
      const newest = Number(rows[0].newest || 0);
      const ids = (rows[0].ids || []).map(Number);
      if (cursor > newest || ids.length > REPLAY_LIMIT) {
        first += frame('resync', cursor > newest ? 'cursor-ahead' : 'too-far-behind', newest);
        sub.upto = newest;
      } else {
        for (const id of ids) first += frame('activity', id, id);
        sub.upto = ids.length ? ids[ids.length - 1] : cursor;
      }
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
    });
    res.write(first);
    const waiting = sub.pending;
    sub.pending = null;
    for (const [chunk, id] of waiting) if (id === 0 || id > sub.upto) res.write(chunk);
    if (who) presenceJoin(who).catch((err) => console.error('presence join failed:', err.message));
  }

  function page(req, res) {
    const set = [];
    let who = visitor(req);
    if (!who) {
      const id = crypto.randomUUID();
      const name64 = Buffer.from(`Visitor ${id.slice(0, 4)}`).toString('base64url');
      set.push(`ripple_visitor=${id}.${name64}.${sign(`${id}.${name64}`)}; Path=/; HttpOnly; SameSite=Lax`);
      who = { id };
    }
    if (!cookies(req).csrftoken) {
      const nonce = crypto.randomBytes(16).toString('hex');
      set.push(`csrftoken=${nonce}.${sign(nonce)}; Path=/; SameSite=Strict`);
    }
    html(res, 200, '<!doctype html><title>Ripple (Node peer)</title><div id="live"></div>', {
      'cache-control': 'no-store',
      'set-cookie': set,
    });
  }

  async function healthz(res) {
    await pool.query('SELECT 1');
    const ok = listenerConnected;
    json(res, ok ? 200 : 503, { status: ok ? 'ok' : 'degraded', listener: ok ? 'connected' : 'down' }, { 'cache-control': 'no-store' });
  }

  const ITEM_PATH = /^\/fragments\/activity\/([1-9][0-9]{0,17})$/;

  async function route(req, res) {
    const q = req.url.indexOf('?');
    const path = q < 0 ? req.url : req.url.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : req.url.slice(q + 1));
    if (req.method === 'GET') {
      const m = ITEM_PATH.exec(path);
      if (m) return itemFragment(req, res, Number(m[1]));
      if (path === '/events') return events(req, res, query);
      if (path === '/fragments/activity') return listFragment(req, res, query);
      if (path === '/fragments/counter') {
        const { rows } = await pool.query({ name: 'counter', text: 'SELECT value FROM counters WHERE id = 1' });
        const value = Number(rows[0].value);
        if (wantsJson(req)) return json(res, 200, { value }, { 'cache-control': 'no-cache' });
        return html(res, 200, counterHtml(value), { 'cache-control': 'no-cache', vary: FRAGMENT_VARY });
      }
      if (path === '/healthz') return healthz(res);
      if (path === '/') return page(req, res);
    } else if (req.method === 'POST') {
      if (path === '/activity') return postActivity(req, res);
      if (path === '/counter/increment') return increment(req, res);
    }
    return html(res, 404, 'Not found.', { 'cache-control': 'no-store' });
  }

  const server = http.createServer((req, res) => {
    route(req, res).catch((err) => {
      console.error(`${req.method} ${req.url.slice(0, 40)} failed: ${err.message}`);
      if (res.headersSent) return res.destroy();
      json(res, 503, { detail: `database unavailable: ${err.message}` }, { 'retry-after': '2' });
    });
  });
  server.keepAliveTimeout = 5000; // uvicorn's default
  server.requestTimeout = 0; // a stream is one request for its whole life

  async function start() {
    await pool.query(
      'INSERT INTO workers (id, instance_id, listener_connected) VALUES ($1, $2, true) ON CONFLICT DO NOTHING',
      [workerId, `node-${process.ppid}`],
    );
    await listen();
    server.listen(PORT, HOST, 2048);
  }

  async function stop() {
    server.close();
    for (const sub of subs) sub.res.end();
    await pool.query('DELETE FROM workers WHERE id = $1', [workerId]).catch(() => {});
    process.exit(0);
  }
  process.on('SIGTERM', () => stop());
  let profiling = null;
  process.on('SIGUSR2', () => {
    const inspector = require('node:inspector');
    if (profiling === null) {
      profiling = new inspector.Session();
      profiling.connect();
      profiling.post('Profiler.enable', () =>
        profiling.post('Profiler.setSamplingInterval', { interval: 1000 }, () =>
          profiling.post('Profiler.start'),
        ),
      );
      return;
    }
    const session = profiling;
    profiling = null;
    session.post('Profiler.stop', (err, result) => {
      if (!err && process.env.NODE_PEER_PROFILE_DIR) {
        const file = `${process.env.NODE_PEER_PROFILE_DIR}/worker-${process.pid}-${Date.now()}.cpuprofile`;
        require('node:fs').writeFileSync(file, JSON.stringify(result.profile));
      }
      session.disconnect();
    });
  });
  process.on('SIGINT', () => {}); // the primary decides

  start().catch((err) => {
    console.error('worker failed to start:', err.message);
    process.exit(1);
  });
}
