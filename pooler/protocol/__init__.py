"""Sans-IO PostgreSQL wire protocol: startup packets, message builders, parsers and framing."""

from pooler import hotpath

__path__ = hotpath.package_path(__path__, __name__)  # compiled modules first, if active
