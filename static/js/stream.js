// The live stream's lifecycle, which hx-sse does not cover by itself: one tab per browser
// holds the stream (Web Locks) and relays its events to the other tabs (BroadcastChannel);
// a refused first connect is reopened after Retry-After (hx-sse swaps it and gives up); a
// stream silent for SILENCE_MS is reopened; the connection state goes to the indicator.
//
// Named events bubble from the hx-sse:connect element to #live, where the widgets listen
// ("counter from:#live") and feed.js too; relayed events are dispatched on #live itself.
import {retryAfter} from './errors.js';
import {announceStatus} from './status.js';

// No event at all (pings included) for this long: the stream is dead. The server names it
// (RIPPLE_STREAM_SILENCE_SECONDS, 35 s; tests shorten it); checked seven times per window.
const SILENCE_MS = Number(document.querySelector('meta[name="ripple-silence-ms"]')?.content) || 35000;
const WATCHDOG_MS = Math.min(5000, Math.max(250, SILENCE_MS / 7));
const EVENTS = ['counter', 'presence', 'activity', 'ping', 'resync'];

export function startStream({live, status, cursor}) {
  let role = 'none';
  let channel = null;          // BroadcastChannel to the other tabs, when there is one
  let lastHeard = Date.now();  // last sign of life from the stream (or from the leader)

  const send = (msg) => channel?.postMessage(msg);

  // The leader relays its state; a follower shows what the leader relays.
  function setStatus(state, relayed = false) {
    announceStatus(state);
    if (role === 'leader' && !relayed) send({t: 'status', state});
  }

  // Each (re)open: counter and presence re-read, the feed catches up (they listen on #live).
  const opened = () => htmx.trigger(live, 'ripple-open', {});

  const stream = {
    el: null,                  // the current hx-sse:connect element, inside #live
    abort: null,               // aborts its first request while that is still pending
    timer: null,
    failures: 0,

    url() {
      const u = new URL(live.dataset.streamUrl || '/events', location.href);
      u.searchParams.set('last_event_id', String(cursor()));
      return u.pathname + u.search;
    },

    // Start a fresh connection from the feed's cursor; the server replays what we missed.
    open() {
      this.close();
      const el = document.createElement('div');
      el.id = 'live-stream';
      el.setAttribute('hx-sse:connect', this.url());
      el.setAttribute('hx-swap', 'none');
      live.append(el);
      this.el = el;
      lastHeard = Date.now();
      htmx.process(el);
    },

    // Retire the current connection. Its late events then fire on document (htmx dispatches on
    // document for detached elements), so every handler below checks the element.
    close() {
      clearTimeout(this.timer);
      const el = this.el;
      if (!el) return;
      this.el = null;
      this.abort?.();
      this.abort = null;
      el.setAttribute('hx-ignore', '');
      htmx.process(el, true);  // runs hx-sse's cleanup: cancels the reader, aborts the fetch
      el.remove();
    },

    // Reopen later: after Retry-After when the server gave one, else with jittered backoff.
    later(wait) {
      this.close();
      this.failures++;
      const backoff = Math.min(60, 2 ** Math.min(this.failures, 6)) * (0.7 + Math.random() * 0.6);
      const ms = (wait ?? backoff) * 1000;
      lastHeard = Date.now() + ms;               // keep the watchdog quiet meanwhile
      this.timer = setTimeout(() => this.open(), ms);
    },
  };

  function refused(wait) {
    setStatus('reconnecting');
    stream.later(wait);
  }

  // A refused connect (429, 503) is an answer to the stream element's request: never swapped.
  live.addEventListener('htmx:after:request', (e) => {
    const {ctx} = e.detail;
    if (ctx.sourceElement !== stream.el || e.target !== stream.el) return;
    const status = ctx.response?.status ?? 0;
    if (status >= 400) {
      e.preventDefault();
      refused(retryAfter(ctx.response.headers));
    }
  });

  live.addEventListener('htmx:error', (e) => {
    if (e.detail.ctx?.sourceElement === stream.el && stream.el) refused(null);
  });

  live.addEventListener('htmx:before:request', (e) => {
    const {ctx} = e.detail;
    if (ctx.sourceElement === stream.el) stream.abort = ctx.request.abort;
  });

  live.addEventListener('htmx:sse:before:connection', (e) => {
    if (e.target === stream.el && e.detail.connection?.attempt > 0) setStatus('reconnecting');
  });

  live.addEventListener('htmx:sse:after:connection', (e) => {
    if (e.target !== stream.el) return;
    stream.abort = null;
    stream.failures = 0;
    lastHeard = Date.now();
    setStatus('live');
    opened();
    send({t: 'open'});
  });

  live.addEventListener('htmx:sse:error', (e) => {
    if (e.target === stream.el) setStatus('reconnecting');
  });

  live.addEventListener('htmx:sse:close', (e) => {
    if (e.target === stream.el) refused(null);   // hx-sse gave up: start over ourselves
  });

  // Every sign of life resets the watchdog; the leader relays its stream's events.
  for (const name of EVENTS) {
    live.addEventListener(name, (e) => {
      if (e.target !== live && e.target !== stream.el) return;   // a retired connection
      lastHeard = Date.now();
      if (e.target === stream.el) {
        const {data, id} = e.detail || {};
        send({t: 'event', name, data, id});
      }
    });
  }

  // Watchdog: a silent stream is a dead one (pings come at least every 15 s).
  setInterval(() => {
    if (!navigator.onLine || Date.now() - lastHeard < SILENCE_MS) return;
    if (role === 'leader') {
      setStatus('reconnecting');
      stream.open();
    } else if (role === 'follower') {
      setStatus('reconnecting', true);           // the leader has gone quiet
      lastHeard = Date.now();
      send({t: 'hello'});
    }
  }, WATCHDOG_MS);

  window.addEventListener('offline', () => setStatus('offline', role !== 'leader'));
  window.addEventListener('online', () => {
    if (role === 'leader') {
      setStatus('reconnecting');
      stream.open();                             // do not wait out a long backoff
    } else {
      setStatus('reconnecting', true);
      send({t: 'hello'});
    }
  });

  // One tab per browser holds the stream (HTTP/1.1 allows six connections per host). The Web
  // Lock is held until the tab closes; the next tab in line then opens its own stream from its
  // own cursor. The leader relays every named event, its status and "stream opened".
  function becomeLeader() {
    role = 'leader';
    document.documentElement.dataset.stream = 'leader';
    setStatus('reconnecting');                   // until our own stream is open
    stream.open();
  }

  function onRelay({data: msg}) {
    if (!msg) return;
    if (role === 'leader') {
      if (msg.t === 'hello') send({t: 'status', state: status.dataset.state});
      return;
    }
    if (msg.t === 'hello') return;               // another follower starting up
    lastHeard = Date.now();
    if (msg.t === 'event') htmx.trigger(live, msg.name, {data: msg.data, id: msg.id});
    else if (msg.t === 'status') setStatus(msg.state, true);
    else if (msg.t === 'open') opened();
  }

  if (!(navigator.locks && window.BroadcastChannel)) {
    becomeLeader();                              // not a secure context: every tab streams
  } else {
    channel = new BroadcastChannel('ripple');
    channel.onmessage = onRelay;
    role = 'follower';
    document.documentElement.dataset.stream = 'follower';
    navigator.locks.request('ripple-stream', () => {
      becomeLeader();
      return new Promise(() => {});              // hold the lock for the life of the tab
    }).catch(() => role !== 'leader' && becomeLeader());
    // A follower missed whatever the leader relayed before this tab listened: catch up once.
    setTimeout(() => {
      if (role !== 'follower') return;
      send({t: 'hello'});
      opened();
    }, 200);
  }

  return {
    role: () => role,
    reconnect: () => role === 'leader' && stream.open(),
  };
}
