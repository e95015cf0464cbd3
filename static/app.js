// Ripple page script: CSRF header, error routing, the feed merge, the live stream (one leader tab
// per browser, relayed to the others), connection status, "you" marks and relative times.
// Plain browser JavaScript, no build step. Runs after htmx and hx-sse (all three are deferred).
(() => {
  'use strict';

  const FEED_PAGE = 50;          // the server's page size for /fragments/activity
  const DEBOUNCE_MS = 40;        // merge a burst (or a replay) of activity events into one fetch
  // No event at all (pings included) for this long: the stream is dead. The server names it
  // (RIPPLE_STREAM_SILENCE_SECONDS, 35 s; tests shorten it); checked seven times per window.
  const SILENCE_MS = Number(document.querySelector('meta[name="ripple-silence-ms"]')?.content) || 35000;
  const WATCHDOG_MS = Math.min(5000, Math.max(250, SILENCE_MS / 7));
  const NEWEST = 2147483647;     // "before" bound when a resync carries no id
  const KEEP_ITEMS = 200;        // a long-open page drops its oldest items ("Older" brings them back)

  const $ = (id) => document.getElementById(id);
  const live = $('live');
  const statusEl = $('status');
  const feedList = $('feed');
  const feedScroll = $('feed-scroll');
  const me = document.querySelector('meta[name="ripple-visitor"]')?.content || '';

  // ---------------------------------------------------------------- small helpers

  function csrfToken() {
    const row = document.cookie.split('; ').find((c) => c.startsWith('csrftoken='));
    return row ? decodeURIComponent(row.slice('csrftoken='.length)) : '';
  }

  // Retry-After is seconds (or, rarely, an HTTP date); null when absent.
  function retryAfter(headers) {
    const v = headers?.get('Retry-After');
    if (!v) return null;
    const s = /^\d+$/.test(v.trim()) ? Number(v) : (Date.parse(v) - Date.now()) / 1000;
    return Number.isFinite(s) ? Math.max(1, Math.ceil(s)) : null;
  }

  function errorText(status, body, headers) {
    const wait = retryAfter(headers);
    const reason = (body || '').trim().slice(0, 200);
    if (status === 403) return 'Your session has expired. Reload the page and try again.';
    if (status === 429) return `Too many requests. Try again in ${wait ?? 'a few'} s.`;
    if (status === 409) return 'Your last try is still being saved. Try again in a moment.';
    if (status === 422) return reason || 'That was not accepted.';
    if (status >= 500) return `The server is busy. Try again in ${wait ?? 'a few'} s.`;
    return reason || `Something went wrong (${status}).`;
  }

  // Each form or widget names its message area in data-errors.
  function errorArea(elt) {
    const id = elt?.closest?.('[data-errors]')?.dataset.errors;
    return id ? $(id) : null;
  }

  // A message names who set it: a success clears only its own, except a user's write (a
  // form or button that posts), which clears the area. A background refresh sharing the
  // area (the presence list beside the name form) must not wipe "Too many requests".
  function showError(elt, text) {
    const area = errorArea(elt);
    if (!area) return;
    const from = elt.closest('[data-errors]');
    const write = from.hasAttribute('hx-post');
    if (!text && area.dataset.from && area.dataset.from !== from.id && !write) return;
    area.textContent = text;
    area.dataset.from = text ? from.id : '';
  }

  // ---------------------------------------------------------------- "you" and relative times

  const rtf = new Intl.RelativeTimeFormat(document.documentElement.lang || undefined, {numeric: 'auto'});
  const absolute = new Intl.DateTimeFormat(document.documentElement.lang || undefined,
    {dateStyle: 'medium', timeStyle: 'short'});

  function relative(date) {
    const s = Math.min(0, (date.getTime() - Date.now()) / 1000);   // a fast clock is "now"
    const a = -s;
    if (a < 60) return rtf.format(0, 'minute');
    if (a < 3600) return rtf.format(Math.round(s / 60), 'minute');
    if (a < 86400) return rtf.format(Math.round(s / 3600), 'hour');
    if (a < 7 * 86400) return rtf.format(Math.round(s / 86400), 'day');
    return absolute.format(date);
  }

  function refreshTimes(root = document) {
    for (const t of root.querySelectorAll('time[datetime]')) {
      const d = new Date(t.getAttribute('datetime'));
      if (Number.isNaN(d.getTime())) continue;
      t.textContent = relative(d);
      t.title = absolute.format(d);
    }
  }

  function youBadge() {
    const b = document.createElement('span');
    b.className = 'you';
    b.textContent = 'you';
    return b;
  }

  // Fragments are the same for every viewer; mark this visitor's entries here.
  function decorate(root) {
    const sel = '[data-author-id], [data-visitor-id]';
    for (const el of [root, ...root.querySelectorAll(sel)]) {
      if (!el.matches?.(sel)) continue;
      const id = el.dataset.authorId ?? el.dataset.visitorId;
      if (id !== me || el.classList.contains('is-you')) continue;
      el.classList.add('is-you');
      const who = el.querySelector('.item-who, .person-name');
      who?.after(youBadge());
      if (el.dataset.visitorId) el.parentElement?.prepend(el);  // "you" first in the list
    }
    refreshTimes(root);
  }

  // ---------------------------------------------------------------- the feed

  // cursor: every item up to here has been fetched (or was hidden). It moves only on ?after= and
  // resync answers, never on a POST answer: our own item N may arrive before someone else's N-1,
  // and ?after=N would then skip N-1 for good.
  let cursor = Number(live.dataset.cursor ??
    new URL(live.dataset.streamUrl || '/', location.href).searchParams.get('last_event_id')) || 0;
  let wanted = cursor;           // highest id announced by an activity event
  let catchUp = false;           // fetch ?after=cursor once even if no event asked for it
  let resyncTo = null;           // pending resync: the newest id, or NEWEST when unknown
  let generation = 0;            // bumped when the list is replaced; late "Older" pages are dropped
  let pumping = false;
  let pumpTimer = null;
  let pumpDelay = 0;             // backoff after a failed fetch
  let unseen = 0;                // items that arrived while the reader was scrolled down

  async function fetchPage(query) {
    const res = await fetch(`/fragments/activity?${query}`,
      {headers: {'HX-Request': 'true', Accept: 'text/html'}, credentials: 'same-origin'});
    const text = await res.text();
    if (!res.ok) {
      const err = new Error(errorText(res.status, text, res.headers));
      err.wait = retryAfter(res.headers);
      throw err;
    }
    const tpl = document.createElement('template');
    tpl.innerHTML = text;        // server-rendered and autoescaped, like any htmx swap
    return {
      items: [...tpl.content.querySelectorAll('li[id^="activity-"]')],
      hasOlder: tpl.content.querySelector('[data-has-older]')?.dataset.hasOlder === 'true',
    };
  }

  // Put one item in place: sorted by id, newest first, never twice.
  function place(li) {
    const id = Number(li.dataset.id);
    if (!id || document.getElementById(li.id)) return null;
    let ref = feedList.firstElementChild;
    while (ref && Number(ref.dataset.id) > id) ref = ref.nextElementSibling;
    feedList.insertBefore(li, ref);
    decorate(li);
    return li;
  }

  // New items at the top: highlight them, announce them once, and keep the reader's place.
  function addFresh(items, announce = true) {
    const away = feedScroll.scrollTop > 24;
    const before = feedScroll.scrollHeight;
    const added = items.map(place).filter(Boolean);
    if (!added.length) return;
    for (const li of added) {
      li.classList.add('is-new');
      setTimeout(() => li.classList.remove('is-new'), 2500);
    }
    if (away) {
      feedScroll.scrollTop += feedScroll.scrollHeight - before;
      unseen += added.length;
      const badge = $('feed-new');
      badge.textContent = `${unseen} new`;
      badge.hidden = false;
    } else {
      trimFeed();
    }
    if (announce) $('feed-announcer').textContent = added.length === 1 ? spoken(added[0])
      : `${added.length} new activity items`;
  }

  // "Alice: hello" or "Bob joined", without the time and the "you" badge.
  function spoken(li) {
    const head = li.querySelector('.item-head').cloneNode(true);
    head.querySelectorAll('time, .you').forEach((n) => n.remove());
    const who = head.textContent.replace(/\s+/g, ' ').trim();
    const body = li.querySelector('.item-body')?.textContent.slice(0, 140);
    return body ? `${who}: ${body}` : who;
  }

  // Keep a long-open page small; "Older" brings the rest back. Never while the reader is
  // scrolled down (it would move what they read): then on their way back to the top.
  function trimFeed() {
    if (feedList.children.length <= KEEP_ITEMS) return;
    while (feedList.children.length > KEEP_ITEMS) feedList.lastElementChild.remove();
    setOlder(true);
  }

  function setOlder(hasOlder) {
    $('feed-older').hidden = !hasOlder;
  }

  function schedulePump(delay = DEBOUNCE_MS) {
    clearTimeout(pumpTimer);
    pumpTimer = setTimeout(pump, delay);
  }

  // The only place that fetches new items: one request in flight; events that arrive meanwhile
  // raise `wanted` and the loop runs again, so a burst or a 300-event replay costs few fetches.
  async function pump() {
    if (pumping) return;
    pumping = true;
    try {
      for (;;) {
        if (resyncTo !== null) {
          const newest = resyncTo;
          // Cleared only once the page is in hand: a failed fetch keeps the resync pending.
          const page = await fetchPage(`before=${newest === NEWEST ? NEWEST : newest + 1}`);
          if (resyncTo !== newest) continue;         // another resync came in meanwhile
          resyncTo = null;
          generation++;
          feedList.replaceChildren();
          clearUnseen();
          feedScroll.scrollTop = 0;
          page.items.forEach(place);
          setOlder(page.hasOlder);
          const top = Number(page.items[0]?.dataset.id) || 0;
          cursor = newest === NEWEST ? top : newest;
          wanted = Math.max(wanted, cursor);
          continue;
        }
        if (wanted <= cursor && !catchUp) break;
        catchUp = false;
        const target = wanted;
        const page = await fetchPage(`after=${cursor}`);
        if (resyncTo !== null) continue;             // the list is about to be replaced
        addFresh(page.items);
        const top = Math.max(0, ...page.items.map((li) => Number(li.dataset.id) || 0));
        cursor = Math.max(cursor, top);
        // A short page means nothing else existed after the cursor when it was read, so every id
        // announced before the fetch is covered (an item hidden by an operator never arrives).
        if (page.items.length < FEED_PAGE) cursor = Math.max(cursor, target);
      }
      pumpDelay = 0;
      $('feed-error').textContent = '';
    } catch (err) {
      pumpDelay = err.wait ? err.wait * 1000 : Math.min(30000, (pumpDelay || 1000) * 2);
      $('feed-error').textContent = err.wait ? err.message : 'Could not load new activity. Retrying…';
      schedulePump(pumpDelay);
    } finally {
      pumping = false;
    }
  }

  function onActivity(id) {
    const n = Number(id);
    if (n > wanted) wanted = n;
    if (!pumpDelay) schedulePump();              // during a backoff the retry picks it up
  }

  function onResync(id) {
    const n = Number(id);
    resyncTo = n >= 0 && id !== '' && id != null ? n : NEWEST;
    schedulePump(0);
  }

  $('feed-older').addEventListener('click', async (e) => {
    const btn = e.currentTarget;
    const oldest = feedList.lastElementChild?.dataset.id;
    if (!oldest || btn.disabled) return;
    const gen = generation;
    btn.disabled = true;
    try {
      const page = await fetchPage(`before=${oldest}`);
      if (gen !== generation) return;              // the list was replaced meanwhile
      page.items.forEach(place);
      setOlder(page.hasOlder);
      $('feed-error').textContent = '';
    } catch (err) {
      $('feed-error').textContent = err.message || 'Could not load older activity.';
    } finally {
      btn.disabled = false;
    }
  });

  $('feed-new').addEventListener('click', () => {
    feedScroll.scrollTo({top: 0, behavior: 'smooth'});
    feedScroll.focus({preventScroll: true});
  });

  function clearUnseen() {
    unseen = 0;
    $('feed-new').hidden = true;
    if (feedScroll.scrollTop <= 24) trimFeed();
  }

  feedScroll.addEventListener('scroll', () => {
    if (feedScroll.scrollTop <= 24 && unseen) clearUnseen();
  }, {passive: true});

  // ---------------------------------------------------------------- idempotency keys

  // Every write carries an Idempotency-Key. A form keeps its key while its content is unchanged,
  // until an answer settles the write; so a second click after a timeout, a network error, a 5xx,
  // a 409 (the first is still in flight) or a 429 repeats that write instead of adding another.
  // The +1 button makes a key per click: its clicks queue, and each one is another +1.
  const formKeys = new Map();    // form id -> {key, content}

  function settles(status) {
    return (status >= 200 && status < 300)
      || (status >= 400 && status < 500 && status !== 409 && status !== 429);
  }

  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();          // secure contexts only
    return Array.from(crypto.getRandomValues(new Uint8Array(16)),
      (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function idempotencyKey(elt, body) {
    if (elt.tagName !== 'FORM') return newKey();
    const content = new URLSearchParams(body ?? undefined).toString();
    let entry = formKeys.get(elt.id);
    if (entry?.content !== content) formKeys.set(elt.id, entry = {key: newKey(), content});
    return entry.key;
  }

  function settleKey(elt, key) {
    if (formKeys.get(elt.id)?.key === key) formKeys.delete(elt.id);
  }

  // ---------------------------------------------------------------- htmx glue

  document.addEventListener('htmx:config:request', (e) => {
    const {ctx} = e.detail;
    if (ctx.request.method !== 'GET') {
      ctx.request.headers['x-csrftoken'] = csrfToken();
    }
    if (ctx.sourceElement.id === 'post-form') {
      const problem = messageProblem();
      if (problem) {
        e.preventDefault();
        showError(ctx.sourceElement, problem);
        return;
      }
    }
    if (ctx.request.method === 'POST') {
      ctx.idempotencyKey = idempotencyKey(ctx.sourceElement, ctx.request.body);
      ctx.request.headers['Idempotency-Key'] = ctx.idempotencyKey;
    }
  });

  // htmx 4 swaps error bodies too: never let one replace a widget. Errors go to the message area
  // next to the form; a refused stream connect is retried by us (hx-sse does not retry it).
  document.addEventListener('htmx:after:request', (e) => {
    const {ctx} = e.detail;
    const elt = ctx.sourceElement;
    const status = ctx.response?.status ?? 0;
    if (ctx.idempotencyKey && settles(status)) settleKey(elt, ctx.idempotencyKey);
    if (elt === stream.el) {
      if (status >= 400) {
        e.preventDefault();
        streamRefused(retryAfter(ctx.response.headers));
      }
      return;
    }
    if (status >= 400) {
      e.preventDefault();
      showError(elt, errorText(status, ctx.text, ctx.response.headers));
      if (status === 429 || status >= 500) retryWidget(elt, retryAfter(ctx.response.headers));
      return;
    }
    showError(elt, '');
    if (elt.id === 'post-form') {
      // The 201 answer is our item: merge it like any other (the event brings it again).
      const tpl = document.createElement('template');
      tpl.innerHTML = ctx.text;
      feedScroll.scrollTo({top: 0});
      addFresh([...tpl.content.querySelectorAll('li[id^="activity-"]')], false);
      elt.reset();
      updateCount();
      $('feed-announcer').textContent = 'Message posted.';
    }
  });

  document.addEventListener('htmx:error', (e) => {
    const elt = e.detail.ctx?.sourceElement;
    if (!elt) return;
    if (elt === stream.el) streamRefused(null);
    else if (elt.hasAttribute('hx-get')) retryWidget(elt, 5);   // a refresh; the status says why
    else showError(elt, 'Network problem: the request did not reach the server.');
  });

  // A background refresh that was refused comes back after Retry-After.
  function retryWidget(elt, wait) {
    const url = elt.getAttribute('hx-get');
    if (!url || elt.dataset.retrying) return;
    elt.dataset.retrying = '1';
    setTimeout(() => {
      delete elt.dataset.retrying;
      htmx.ajax('GET', url, {source: elt});
    }, (wait ?? 5) * 1000);
  }

  // The counter only ever increases: drop a swap that would show an older value (fetches can
  // finish out of order). Equal values are dropped too, so screen readers are not re-told.
  document.addEventListener('htmx:before:swap', (e) => {
    const main = e.detail.tasks?.find((t) => t.type === 'main');
    if (main?.target?.id !== 'counter') return;
    const next = Number(main.fragment.querySelector?.('[data-value]')?.dataset.value);
    const now = Number($('counter').querySelector('[data-value]')?.dataset.value);
    if (Number.isFinite(next) && Number.isFinite(now) && next <= now) e.preventDefault();
  });

  document.addEventListener('htmx:after:swap', (e) => {
    const target = e.detail.ctx?.target;
    if (target?.isConnected) decorate(target);
  });

  // ---------------------------------------------------------------- post form

  const message = $('post-message');
  const maxLen = Number(message.dataset.max) || 280;

  // Count characters as the server does (code points, after trimming).
  function messageLength() {
    return [...message.value.trim()].length;
  }

  function messageProblem() {
    const n = messageLength();
    if (n === 0) return 'Write something first.';
    const over = n - maxLen;
    if (over > 0) return `That is ${over} character${over === 1 ? '' : 's'} too long (${maxLen} at most).`;
    return '';
  }

  function updateCount() {
    const n = messageLength();
    const count = $('post-count');
    count.textContent = `${n} / ${maxLen}`;
    count.classList.toggle('is-over', n > maxLen);
    message.setAttribute('aria-invalid', String(n > maxLen));
  }

  message.addEventListener('input', updateCount);
  message.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      $('post-form').requestSubmit();
    }
  });

  // ---------------------------------------------------------------- status

  let state = statusEl.dataset.state;
  const LABELS = {live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline'};

  function setStatus(next, relayed = false) {
    if (!navigator.onLine) next = 'offline';
    if (next !== state) {
      state = next;
      statusEl.dataset.state = next;
      statusEl.querySelector('.status-text').textContent = LABELS[next];
    }
    if (role === 'leader' && !relayed) send({t: 'status', state: next});
  }

  // ---------------------------------------------------------------- the stream

  let role = 'none';
  let channel = null;            // BroadcastChannel to the other tabs, when there is one
  let lastHeard = Date.now();    // last sign of life from the stream (or from the leader)

  function send(msg) {
    channel?.postMessage(msg);
  }

  const stream = {
    el: null,                    // the current hx-sse:connect element, inside #live
    abort: null,                 // aborts its first request while that is still pending
    timer: null,
    failures: 0,

    url() {
      const u = new URL(live.dataset.streamUrl || '/events', location.href);
      u.searchParams.set('last_event_id', String(cursor));
      return u.pathname + u.search;
    },

    // Start a fresh connection from our own cursor; the server replays what we missed.
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
      htmx.process(el, true);    // runs hx-sse's cleanup: cancels the reader, aborts the fetch
      el.remove();
    },

    // Reopen later: after Retry-After when the server gave one, else with jittered backoff.
    later(wait) {
      this.close();
      this.failures++;
      const backoff = Math.min(60, 2 ** Math.min(this.failures, 6)) * (0.7 + Math.random() * 0.6);
      const ms = (wait ?? backoff) * 1000;
      lastHeard = Date.now() + ms;                 // keep the watchdog quiet meanwhile
      this.timer = setTimeout(() => this.open(), ms);
    },
  };

  function streamRefused(wait) {
    setStatus('reconnecting');
    stream.later(wait);
  }

  document.addEventListener('htmx:before:request', (e) => {
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
    streamOpened();
    send({t: 'open'});
  });

  live.addEventListener('htmx:sse:error', (e) => {
    if (e.target === stream.el) setStatus('reconnecting');
  });

  live.addEventListener('htmx:sse:close', (e) => {
    if (e.target === stream.el) streamRefused(null);   // hx-sse gave up: start over ourselves
  });

  // Each (re)open: counter and presence re-read (they listen for ripple-open on #live).
  function streamOpened() {
    htmx.trigger(live, 'ripple-open', {});
  }

  // Named events bubble from the stream element to #live; relayed ones are dispatched on #live.
  for (const name of ['counter', 'presence', 'activity', 'ping', 'resync']) {
    live.addEventListener(name, (e) => {
      lastHeard = Date.now();
      const {data, id} = e.detail || {};
      if (e.target !== live) {
        if (e.target !== stream.el) return;
        send({t: 'event', name, data, id});
      }
      if (name === 'activity') onActivity(id || data);
      else if (name === 'resync') onResync(id);
    });
  }

  // Watchdog: a silent stream is a dead one (pings come at least every 15 s).
  setInterval(() => {
    if (!navigator.onLine || Date.now() - lastHeard < SILENCE_MS) return;
    if (role === 'leader') {
      setStatus('reconnecting');
      stream.open();
    } else if (role === 'follower') {
      setStatus('reconnecting', true);             // the leader has gone quiet
      lastHeard = Date.now();
      send({t: 'hello'});
    }
  }, WATCHDOG_MS);

  window.addEventListener('offline', () => setStatus('offline', role !== 'leader'));
  window.addEventListener('online', () => {
    if (role === 'leader') {
      setStatus('reconnecting');
      stream.open();                               // do not wait out a long backoff
    } else {
      setStatus('reconnecting', true);
      send({t: 'hello'});
    }
  });

  // ---------------------------------------------------------------- leader and followers

  // One tab per browser holds the stream (HTTP/1.1 allows six connections per host). The Web
  // Lock is held until the tab closes; the next tab in line then opens its own stream from its
  // own cursor. The leader relays every named event, its status and "stream opened".
  function becomeLeader() {
    role = 'leader';
    document.documentElement.dataset.stream = 'leader';
    setStatus('reconnecting');                     // until our own stream is open
    stream.open();
  }

  function onRelay({data: msg}) {
    if (!msg) return;
    if (role === 'leader') {
      if (msg.t === 'hello') send({t: 'status', state});   // a new tab asks how the stream is
      return;
    }
    if (msg.t === 'hello') return;                 // another follower starting up
    lastHeard = Date.now();
    if (msg.t === 'event') htmx.trigger(live, msg.name, {data: msg.data, id: msg.id});
    else if (msg.t === 'status') setStatus(msg.state, true);
    else if (msg.t === 'open') streamOpened();
  }

  function start() {
    decorate(document);
    updateCount();
    setInterval(() => refreshTimes(), 30000);
    if (!navigator.onLine) setStatus('offline', true);

    if (!(navigator.locks && window.BroadcastChannel)) {
      becomeLeader();                              // not a secure context: every tab streams
      return;
    }
    channel = new BroadcastChannel('ripple');
    channel.onmessage = onRelay;
    role = 'follower';
    document.documentElement.dataset.stream = 'follower';
    navigator.locks.request('ripple-stream', () => {
      becomeLeader();
      return new Promise(() => {});                // hold the lock for the life of the tab
    }).catch(() => role !== 'leader' && becomeLeader());
    // A follower missed whatever the leader relayed before this tab listened: catch up once.
    setTimeout(() => {
      if (role !== 'follower') return;
      send({t: 'hello'});
      streamOpened();
      catchUp = true;
      schedulePump();
    }, 200);
  }

  window.ripple = {
    cursor: () => cursor,
    role: () => role,
    state: () => state,
    reconnect: () => role === 'leader' && stream.open(),
  };

  // Start after htmx has processed the page (its DOMContentLoaded listener was added first), so
  // the stream element is processed exactly once.
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else setTimeout(start);
})();
