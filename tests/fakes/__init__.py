"""Recording stand-ins for optional libraries that CPU machines do not have."""
