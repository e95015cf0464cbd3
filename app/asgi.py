"""The ASGI application the server imports (configured from the environment)."""

from app import gcpolicy
from app.main import create_app

app = create_app()
gcpolicy.apply()
