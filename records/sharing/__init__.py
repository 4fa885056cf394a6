"""Consent: grants, access requests, break-glass, and re-keying after a revocation."""
