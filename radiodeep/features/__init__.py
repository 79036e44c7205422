"""Feature routes (handcrafted, deep) and their per-case cache."""
