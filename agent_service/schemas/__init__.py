"""Every request and response body, one module per resource. One Struct drives validation,
encoding and the OpenAPI schema."""
