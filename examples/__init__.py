"""Examples: a tools module for dialplans and a dialplan written in Python code."""
