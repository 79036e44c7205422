"""Networks that learn from the cohort, fitted inside each evaluation fold."""
