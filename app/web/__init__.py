"""HTTP: pages, fragments, actions, the event stream and system endpoints."""
