"""Django project wiring for Greenvisor: settings, URLs, WSGI entry point."""
