"""POP3 for fetchpop: the sans-IO protocol, authentication, transport and client."""
