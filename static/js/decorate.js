// Fragments are the same for every viewer (so they can be cached): this visitor's entries get
// their "you" mark here, and times are shown relative to now.
const SELECTOR = '[data-author-id], [data-visitor-id]';

export function installDecorate(me) {
  const lang = document.documentElement.lang || undefined;
  const rtf = new Intl.RelativeTimeFormat(lang, {numeric: 'auto'});
  const absolute = new Intl.DateTimeFormat(lang, {dateStyle: 'medium', timeStyle: 'short'});

  function relative(date) {
    const s = Math.min(0, (date.getTime() - Date.now()) / 1000);   // a fast clock is "now"
    const a = -s;
    if (a < 60) return rtf.format(0, 'minute');
    if (a < 3600) return rtf.format(Math.round(s / 60), 'minute');
    if (a < 86400) return rtf.format(Math.round(s / 3600), 'hour');
    if (a < 7 * 86400) return rtf.format(Math.round(s / 86400), 'day');
    return absolute.format(date);
  }

  function refreshTimes(root) {
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

  function decorate(root) {
    for (const el of [root, ...root.querySelectorAll(SELECTOR)]) {
      if (!el.matches?.(SELECTOR)) continue;
      const id = el.dataset.authorId ?? el.dataset.visitorId;
      if (id !== me || el.classList.contains('is-you')) continue;
      el.classList.add('is-you');
      el.querySelector('.item-who, .person-name')?.after(youBadge());
      if (el.dataset.visitorId) el.parentElement?.prepend(el);  // "you" first in the list
    }
    refreshTimes(root);
  }

  document.addEventListener('htmx:after:swap', (e) => {
    const target = e.detail.ctx?.target;
    if (target?.isConnected) decorate(target);
  });
  decorate(document.body);
  setInterval(() => refreshTimes(document), 30000);
}
