"""accompanist_py: resilient choreographic programming in Python."""
