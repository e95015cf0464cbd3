// The forms' side of every request: the CSRF header, the post form's own checks, its
// character count and Ctrl+Enter, and what a successful post does to the form.
//
// Request configuration for forms lives in onConfigRequest below: it is the place for any
// per-request header a write needs (e.g. an Idempotency-Key per form content).

function csrfToken() {
  const row = document.cookie.split('; ').find((c) => c.startsWith('csrftoken='));
  return row ? decodeURIComponent(row.slice('csrftoken='.length)) : '';
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
      }
    }
  }

  document.addEventListener('htmx:config:request', onConfigRequest);

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
