// The connection indicator. Anyone sets it by dispatching STATUS_EVENT on document; the
// indicator's data-state is the one place the current state is kept.
export const STATUS_EVENT = 'ripple:status';

const LABELS = {live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline'};

export function announceStatus(state) {
  document.dispatchEvent(new CustomEvent(STATUS_EVENT, {detail: {state}}));
}

export function installStatus(indicator) {
  document.addEventListener(STATUS_EVENT, (e) => {
    const next = navigator.onLine ? e.detail.state : 'offline';
    if (next === indicator.dataset.state) return;
    indicator.dataset.state = next;
    indicator.querySelector('.status-text').textContent = LABELS[next];
  });
  if (!navigator.onLine) announceStatus('offline');
}
