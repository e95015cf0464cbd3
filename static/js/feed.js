// The feed's extras around htmx. htmx does every request and every swap: an `activity` event
// fetches its item's cacheable URL /fragments/activity/{id} (the same URL for every page, so
// a proxy absorbs the fan-in); catch-up (stream open, resync, a gap in ids, a burst or a
// replay) is one /fragments/activity?after=<cursor> list. All go through #feed's request queue
// (hx-sync="queue all"), so answers are swapped in the order they were asked for. What stays
// here: choosing which URL to ask for, keeping items sorted and once, the reader's place and
// "New items", trimming to KEEP_ITEMS, and retrying after a failure.
//
// The cursor lives in #feed-cursor: every item up to it has been shown or was hidden. Only a
// list answer moves it (the server swaps a new #feed-cursor in out of band). Never an item
// answer or the page's own POST answer: our item N may be shown before someone else's N-1
// has arrived, and ?after=N would then skip N-1 for good.
import {errorText, retryAfter} from './errors.js';

const DEBOUNCE_MS = 40;        // events this close together are one burst: one list fetch
const KEEP_ITEMS = 200;        // a long-open page drops its oldest items ("Older" brings them back)
const LAG = 25;                // announced ids this far past the cursor: catch up with a list
const AWAY_PX = 24;            // scrolled down further than this: the reader is reading

const LIST = '/fragments/activity';
const itemId = (li) => Number(li.dataset.id) || 0;

export function installFeed({live, list, scroll, newBadge, announcer, errorArea}) {
  const cursor = () => Number(document.getElementById('feed-cursor')?.dataset.cursor) || 0;
  const complete = () => document.getElementById('feed-cursor')?.dataset.complete !== 'false';
  const older = () => document.getElementById('feed-older');

  let announced = cursor();    // the highest id an activity event has named
  const pending = new Set();   // ids announced since the last flush
  let catchUp = false;         // the next flush fetches a list, whatever the ids
  let listWaiting = false;     // a list fetch is queued and not started: it covers new events
  let timer = null;
  let failures = 0;
  let unseen = 0;

  list.dataset.ownErrors = '';

  // -------------------------------------------------------------- asking

  function ask(path, swap) {
    htmx.ajax('GET', path, {source: list, target: list, swap}).catch(() => {});
  }

  function schedule(delay = DEBOUNCE_MS) {
    if (timer === null) timer = setTimeout(flush, delay);
  }

  function flush() {
    timer = null;
    const ids = [...pending].filter((id) => !document.getElementById(`activity-${id}`));
    pending.clear();
    if (listWaiting) return;                     // it reads after these ids were committed
    if (catchUp || ids.length > 1 || announced - cursor() > LAG) {
      catchUp = false;
      listWaiting = true;
      ask(`${LIST}?after=`, 'afterbegin');       // the cursor is filled in when it starts
    } else if (ids.length === 1) {
      ask(`${LIST}/${ids[0]}`, 'afterbegin');
    }
  }

  // A failure: catch up with a list later (after Retry-After, else with backoff).
  function retryLater(wait) {
    failures++;
    catchUp = true;
    clearTimeout(timer);
    const backoff = Math.min(30, 2 ** Math.min(failures, 5));
    timer = setTimeout(flush, (wait ?? backoff) * 1000);
  }

  live.addEventListener('activity', (e) => {
    const id = Number(e.detail?.id || e.detail?.data);
    if (!(id > 0)) return;
    if (id > announced + 1) catchUp = true;      // a gap: something may have been missed
    announced = Math.max(announced, id);
    pending.add(id);
    schedule();
  });

  // Stream (re)opened: the server replays what the cursor has not seen; one list covers it.
  live.addEventListener('ripple-open', () => {
    catchUp = true;
    schedule();
  });

  // The feed is rebuilt from the newest page; items hidden meanwhile drop out.
  live.addEventListener('resync', () => {
    ask(LIST, 'innerHTML');
  });

  document.addEventListener('click', (e) => {
    const button = e.target.closest?.('#feed-older');
    if (!button || button.disabled || !list.lastElementChild) return;
    button.disabled = true;
    ask(`${LIST}?before=`, 'beforeend');         // the bound is filled in when it starts
  });

  newBadge.addEventListener('click', () => {
    scroll.scrollTo({top: 0, behavior: 'smooth'});
    scroll.focus({preventScroll: true});
  });

  scroll.addEventListener('scroll', () => {
    if (scroll.scrollTop <= AWAY_PX && unseen) clearUnseen();
  }, {passive: true});

  // Requests wait in the queue; their bounds are read from the page when they start.
  list.addEventListener('htmx:before:request', (e) => {
    const req = e.detail.ctx.request;
    if (req.action.startsWith(`${LIST}?after=`)) {
      listWaiting = false;
      req.action = `${LIST}?after=${cursor()}`;
    } else if (req.action.startsWith(`${LIST}?before=`)) {
      const oldest = itemId(list.lastElementChild ?? {dataset: {}});
      if (!oldest) {
        e.preventDefault();
        return;
      }
      req.action = `${LIST}?before=${oldest}`;
    }
  });

  list.addEventListener('htmx:after:request', (e) => {
    const {ctx} = e.detail;
    const status = ctx.response?.status ?? 0;
    if (ctx.request.action.startsWith(`${LIST}?before=`)) {
      const button = older();
      if (button) button.disabled = false;
    }
    if (status < 400) {
      failures = 0;
      errorArea.textContent = '';
      return;
    }
    e.preventDefault();
    if (status === 404 || status === 410) return;  // an item hidden by an operator
    errorArea.textContent = errorText(status, ctx.text, ctx.response.headers);
    retryLater(retryAfter(ctx.response.headers));
  });

  list.addEventListener('htmx:error', (e) => {
    if (e.detail.ctx?.request?.action?.startsWith(`${LIST}?after=`)) listWaiting = false;
    const button = older();
    if (button) button.disabled = false;
    errorArea.textContent = 'Could not load new activity. Retrying…';
    retryLater(null);
  });

  // -------------------------------------------------------------- swapping

  // Before any swap into the feed: keep each item once, and never add one below the oldest
  // shown while older ones exist (the "Older" page would then skip those between).
  const swaps = new WeakMap();  // request context -> what the swap is about to do
  document.addEventListener('htmx:before:swap', (e) => {
    const main = e.detail.tasks?.find((t) => t.type === 'main' && t.target === list);
    if (!main) return;
    const style = main.swapSpec?.style;
    if (style !== 'innerHTML') {
      const oldest = itemId(list.lastElementChild ?? {dataset: {}});
      const olderExist = older() && !older().hidden;
      for (const li of main.fragment.querySelectorAll('li[id^="activity-"]')) {
        const known = document.getElementById(li.id);
        const below = style === 'afterbegin' && olderExist && itemId(li) < oldest;
        if (known || below) li.remove();
      }
    }
    swaps.set(e.detail.ctx, {
      style,
      own: e.detail.ctx.request.method !== 'GET',
      away: scroll.scrollTop > AWAY_PX,
      height: scroll.scrollHeight,
      ids: [...main.fragment.querySelectorAll('li[id^="activity-"]')].map((li) => li.id),
    });
  });

  document.addEventListener('htmx:after:swap', (e) => {
    const {ctx} = e.detail;
    const done = swaps.get(ctx);
    if (!done) return;
    swaps.delete(ctx);
    sortItems();
    announced = Math.max(announced, cursor());
    if (done.style === 'innerHTML') {
      clearUnseen();
      scroll.scrollTop = 0;
    } else if (done.style === 'afterbegin') {
      fresh(done);
    }
    // A full list page: more may follow right after it.
    if (ctx.request.action.startsWith(`${LIST}?after=`) && !complete()) {
      catchUp = true;
      schedule(0);
    }
  });

  // Answers arrive in order, but a POST answer or a catch-up can interleave with items shown.
  function sortItems() {
    const items = [...list.children];
    const sorted = [...items].sort((a, b) => itemId(b) - itemId(a));
    if (sorted.some((li, i) => li !== items[i])) list.append(...sorted);
  }

  // New items at the top: highlight, announce once, keep the reader's place.
  function fresh({own, away, height, ids}) {
    const added = ids.map((id) => document.getElementById(id)).filter(Boolean);
    if (!added.length) return;
    for (const li of added) {
      li.classList.add('is-new');
      setTimeout(() => li.classList.remove('is-new'), 2500);
    }
    if (away && !own) {
      scroll.scrollTop += scroll.scrollHeight - height;
      unseen += added.length;
      newBadge.textContent = `${unseen} new`;
      newBadge.hidden = false;
    } else {
      trim();
    }
    if (!own) {
      announcer.textContent = added.length === 1 ? spoken(added[0])
        : `${added.length} new activity items`;
    }
  }

  // "Alice: hello" or "Bob joined", without the time and the "you" badge.
  function spoken(li) {
    const head = li.querySelector('.item-head').cloneNode(true);
    head.querySelectorAll('time, .you').forEach((n) => n.remove());
    const who = head.textContent.replace(/\s+/g, ' ').trim();
    const body = li.querySelector('.item-body')?.textContent.slice(0, 140);
    return body ? `${who}: ${body}` : who;
  }

  // Keep a long-open page small. Never while the reader is scrolled down (it would move what
  // they read): then on their way back to the top.
  function trim() {
    if (list.children.length <= KEEP_ITEMS) return;
    while (list.children.length > KEEP_ITEMS) list.lastElementChild.remove();
    const button = older();
    if (button) button.hidden = false;
  }

  function clearUnseen() {
    unseen = 0;
    newBadge.hidden = true;
    if (scroll.scrollTop <= AWAY_PX) trim();
  }

  return {cursor};
}
