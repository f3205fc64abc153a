"""`icg serve`: personalized covers over HTTP (FastAPI), micro-batched, bounded and authenticated.

Needs the ``serve`` extra (``pip install icg[serve]``).
"""

from icg.serve.app import create_app
from icg.serve.backend import CoverBackend, PipelineBackend
from icg.serve.config import ServeConfig
from icg.serve.server import run_server, uvicorn_server

__all__ = [
    "CoverBackend",
    "PipelineBackend",
    "ServeConfig",
    "create_app",
    "run_server",
    "uvicorn_server",
]
