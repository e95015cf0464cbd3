"""Named reads and writes. Every write notifies inside its own transaction."""
