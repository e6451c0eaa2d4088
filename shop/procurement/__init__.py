"""Unit procurement: organisations, bulk orders, approval, invoices on net terms."""
