"""The consumption-assistance ledger: recognition, daily totals, closed months, counter sales."""
