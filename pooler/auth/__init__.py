"""Sans-IO authentication exchanges (SCRAM-SHA-256 and MD5), both client and server side."""
