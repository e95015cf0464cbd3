"""The phases of a benchmark run, one module each, on the state they share (`context`):

- `direct`: the app's statements straight through asyncpg, the reference;
- `throughput`: writes and fragment reads as fast as an instance answers (no streams);
- `streams`: one stream count N, its streams opened, then the phases below with them open;
- `latency`: the event phase and the page phases (write → event, event → fragment);
- `fan_in`: through a proxy, where streams landed and which fetches reached an instance;
- `hammer`: the counter hammer;
- `proxy`: the `--proxy nginx` blocks; `sharded` and `profiled`: the `--peer` mode's.
"""
