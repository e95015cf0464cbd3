// Ripple page script: wires the modules below. Plain ES modules, no build step; loaded as a
// module (deferred), so it runs after htmx and hx-sse. Modules share no mutable state: each
// gets the elements it needs and they talk through DOM events.
import {installCounter} from './counter.js';
import {installDecorate} from './decorate.js';
import {installErrors} from './errors.js';
import {installFeed} from './feed.js';
import {installForms} from './forms.js';
import {installStatus} from './status.js';
import {startStream} from './stream.js';

function start() {
  const $ = (id) => document.getElementById(id);
  const status = $('status');
  installStatus(status);
  installErrors();
  installForms({
    form: $('post-form'),
    message: $('post-message'),
    count: $('post-count'),
    feedScroll: $('feed-scroll'),
    announcer: $('feed-announcer'),
  });
  installDecorate(document.querySelector('meta[name="ripple-visitor"]')?.content || '');
  installCounter($('counter'));
  const feed = installFeed({
    live: $('live'),
    list: $('feed'),
    scroll: $('feed-scroll'),
    newBadge: $('feed-new'),
    announcer: $('feed-announcer'),
    errorArea: $('feed-error'),
  });
  const stream = startStream({live: $('live'), status, cursor: feed.cursor});
  // For the browser tests and for debugging from the console.
  window.ripple = {
    cursor: feed.cursor,
    role: stream.role,
    state: () => status.dataset.state,
    reconnect: stream.reconnect,
  };
}

// Start after htmx has processed the page (its DOMContentLoaded listener was added first), so
// the stream element is processed exactly once.
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else setTimeout(start);
