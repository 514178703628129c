"""Identity: passwords, JWTs, API keys and the Starlette authentication backend."""
