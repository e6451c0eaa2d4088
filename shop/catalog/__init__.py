"""Counties, districts, suppliers, certifications and products."""
