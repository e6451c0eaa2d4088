"""Orders: placing, paying, shipping, cancelling and refunding."""
