"""``make bench``: every speed claim of the project as a figure, measured on the real components."""
