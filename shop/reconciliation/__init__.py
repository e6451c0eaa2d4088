"""Reconciliation with Stripe: repair what missed webhooks left, record every disagreement."""
