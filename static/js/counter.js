// The counter only ever increases: drop a swap that would show an older value (fetches can
// finish out of order). Equal values are dropped too, so screen readers are not re-told.
const value = (root) => Number(root?.querySelector?.('[data-value]')?.dataset.value);

export function installCounter(counter) {
  document.addEventListener('htmx:before:swap', (e) => {
    const main = e.detail.tasks?.find((t) => t.type === 'main');
    if (main?.target !== counter) return;
    const next = value(main.fragment);
    const now = value(counter);
    if (Number.isFinite(next) && Number.isFinite(now) && next <= now) e.preventDefault();
  });
}
