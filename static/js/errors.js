// Error answers go to the message area the form or widget names in data-errors, never into
// the page (htmx's noSwap config already keeps 4xx/5xx bodies out). A refused background
// refresh comes back after Retry-After. Elements marked data-own-errors (the feed) and the
// stream inside #live route their own errors.

// Retry-After is seconds (or, rarely, an HTTP date); null when absent.
export function retryAfter(headers) {
  const v = headers?.get('Retry-After');
  if (!v) return null;
  const s = /^\d+$/.test(v.trim()) ? Number(v) : (Date.parse(v) - Date.now()) / 1000;
  return Number.isFinite(s) ? Math.max(1, Math.ceil(s)) : null;
}

export function errorText(status, body, headers) {
  const wait = retryAfter(headers);
  const reason = (body || '').trim().slice(0, 200);
  if (status === 403) return 'Your session has expired. Reload the page and try again.';
  if (status === 429) return `Too many requests. Try again in ${wait ?? 'a few'} s.`;
  if (status === 409) return 'Your last try is still being saved. Try again in a moment.';
  if (status === 422) return reason || 'That was not accepted.';
  if (status >= 500) return `The server is busy. Try again in ${wait ?? 'a few'} s.`;
  return reason || `Something went wrong (${status}).`;
}

function errorArea(elt) {
  const id = elt?.closest?.('[data-errors]')?.dataset.errors;
  return id ? document.getElementById(id) : null;
}

// A message names who set it: a success clears only its own, except a user's write (a form or
// button that posts), which clears the area. A background refresh sharing the area (the
// presence list beside the name form) must not wipe "Too many requests".
export function showError(elt, text) {
  const area = errorArea(elt);
  if (!area) return;
  const from = elt.closest('[data-errors]');
  const write = from.hasAttribute('hx-post');
  if (!text && area.dataset.from && area.dataset.from !== from.id && !write) return;
  area.textContent = text;
  area.dataset.from = text ? from.id : '';
}

const routedElsewhere = (elt) => !elt || elt.closest('#live, [data-own-errors]');

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

export function installErrors() {
  document.addEventListener('htmx:after:request', (e) => {
    const {ctx} = e.detail;
    const elt = ctx.sourceElement;
    if (routedElsewhere(elt)) return;
    const status = ctx.response?.status ?? 0;
    if (status >= 400) {
      e.preventDefault();
      showError(elt, errorText(status, ctx.text, ctx.response.headers));
      if (status === 429 || status >= 500) retryWidget(elt, retryAfter(ctx.response.headers));
      return;
    }
    showError(elt, '');
  });

  document.addEventListener('htmx:error', (e) => {
    const elt = e.detail.ctx?.sourceElement;
    if (routedElsewhere(elt)) return;
    if (elt.hasAttribute('hx-get')) retryWidget(elt, 5);   // a refresh; the status says why
    else showError(elt, 'Network problem: the request did not reach the server.');
  });
}
