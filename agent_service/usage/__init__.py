"""Usage: what each agent run used (tokens, model, cost), reports of it, and monthly token budgets."""
