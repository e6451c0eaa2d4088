"""Stripe: the configured client, checkout sessions, refunds and webhooks."""
