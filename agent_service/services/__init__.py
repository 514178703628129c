"""Business rules. No Request, no arq ctx: callers pass plain values and a Deps container."""
