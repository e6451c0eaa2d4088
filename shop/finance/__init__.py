"""Finance (财务): what the finance role sees and records."""
