"""The web dashboard: one static page and a small script over the REST API (no CDN, no build)."""
