"""The admin web UI (issue 13): server-rendered pages over the same core as the API."""
