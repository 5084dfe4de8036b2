"""The HTTP front end: turns requests into calls of the core and answers into JSON, PEM, DER or
problem+json. It holds no business rule of its own, and nothing below it imports Flask."""
