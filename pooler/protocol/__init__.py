"""Sans-IO PostgreSQL wire protocol: startup packets, message builders, parsers and framing."""
