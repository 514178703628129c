"""HTTP API: one module per resource, each exporting `routes`."""
