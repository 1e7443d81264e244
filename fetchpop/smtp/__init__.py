"""SMTP and LMTP, the client side, for delivery targets: sans-IO ``protocol``,
a blocking ``client`` over POP3's transport (one TLS policy, one set of
timeouts), and ``unix`` for an LMTP server's unix socket."""
