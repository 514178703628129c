"""SQL storage: one aiosqlite connection per process, numbered migrations, one module per table."""
