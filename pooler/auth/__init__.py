"""Sans-IO authentication exchanges (SCRAM-SHA-256 and MD5), both client and server side."""

from pooler import hotpath

__path__ = hotpath.package_path(__path__, __name__)  # compiled modules first, if active
