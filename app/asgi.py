"""The ASGI application the server imports (configured from the environment)."""

from app.main import create_app
from app.web.hotpaths import hot_paths

app = hot_paths(create_app())
