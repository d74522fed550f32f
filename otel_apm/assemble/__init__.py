"""Assembly: group ended spans into the traces that analysis reads."""
