// The forms' side of every request: the CSRF header, the Idempotency-Key, the post form's own
// checks, its character count and Ctrl+Enter, and what a successful post does to the form.
// Request configuration for writes lives in onConfigRequest below.

function csrfToken() {
  const row = document.cookie.split('; ').find((c) => c.startsWith('csrftoken='));
  return row ? decodeURIComponent(row.slice('csrftoken='.length)) : '';
}

// Every write carries an Idempotency-Key. A form keeps its key while its content is unchanged,
// until an answer settles the write; so a second click after a timeout, a network error, a 5xx,
// a 409 (the first is still in flight) or a 429 repeats that write instead of adding another.
// The +1 button makes a key per click: its clicks queue, and each one is another +1.
function idempotencyKeys() {
  const formKeys = new Map();  // form id -> {key, content}

  const newKey = () => {
    if (crypto.randomUUID) return crypto.randomUUID();          // secure contexts only
    return Array.from(crypto.getRandomValues(new Uint8Array(16)),
      (b) => b.toString(16).padStart(2, '0')).join('');
  };

  return {
    settles: (status) => (status >= 200 && status < 300)
      || (status >= 400 && status < 500 && status !== 409 && status !== 429),
    keyFor(elt, body) {
      if (elt.tagName !== 'FORM') return newKey();
      const content = new URLSearchParams(body ?? undefined).toString();
      let entry = formKeys.get(elt.id);
      if (entry?.content !== content) formKeys.set(elt.id, entry = {key: newKey(), content});
      return entry.key;
    },
    settle(elt, key) {
      if (formKeys.get(elt.id)?.key === key) formKeys.delete(elt.id);
    },
  };
}

export function installForms({form, message, count, feedScroll, announcer}) {
  const maxLen = Number(message.dataset.max) || 280;

  // Count characters as the server does (code points, after trimming).
  const messageLength = () => [...message.value.trim()].length;

  function messageProblem() {
    const n = messageLength();
    if (n === 0) return 'Write something first.';
    const over = n - maxLen;
    if (over > 0) return `That is ${over} character${over === 1 ? '' : 's'} too long (${maxLen} at most).`;
    return '';
  }

  function updateCount() {
    const n = messageLength();
    count.textContent = `${n} / ${maxLen}`;
    count.classList.toggle('is-over', n > maxLen);
    message.setAttribute('aria-invalid', String(n > maxLen));
  }

  function showProblem(text) {
    const area = document.getElementById(form.dataset.errors);
    area.textContent = text;
    area.dataset.from = form.id;
  }

  const keys = idempotencyKeys();

  function onConfigRequest(e) {
    const {ctx} = e.detail;
    if (ctx.request.method === 'GET') return;
    // htmx reads no cookies: the token travels in the header the server checks.
    ctx.request.headers['x-csrftoken'] = csrfToken();
    if (ctx.sourceElement === form) {
      const problem = messageProblem();
      if (problem) {
        e.preventDefault();
        showProblem(problem);
        return;
      }
    }
    if (ctx.request.method === 'POST') {
      ctx.idempotencyKey = keys.keyFor(ctx.sourceElement, ctx.request.body);
      ctx.request.headers['Idempotency-Key'] = ctx.idempotencyKey;
    }
  }

  document.addEventListener('htmx:config:request', onConfigRequest);
  document.addEventListener('htmx:after:request', (e) => {
    const {ctx} = e.detail;
    if (ctx.idempotencyKey && keys.settles(ctx.response?.status ?? 0)) {
      keys.settle(ctx.sourceElement, ctx.idempotencyKey);
    }
  });

  // The new item itself is swapped into the feed by htmx (hx-target="#feed").
  form.addEventListener('htmx:before:swap', () => feedScroll.scrollTo({top: 0}));
  form.addEventListener('htmx:after:request', (e) => {
    const status = e.detail.ctx.response?.status ?? 0;
    if (status < 200 || status >= 300) return;
    form.reset();
    message.value = '';  // a refused no-script post rendered its text as the default
    updateCount();
    announcer.textContent = 'Message posted.';
  });

  message.addEventListener('input', updateCount);
  message.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  updateCount();
}
