"""Bridges to other libraries. diffusers is optional: it is imported only when a conversion needs it."""
